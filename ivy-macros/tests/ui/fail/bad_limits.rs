#[ivy::task(rate_limit = "abc")]
async fn ping() {}

#[ivy::task(rate_limit = "10/day")]
async fn pong() {}

#[ivy::task(rate_limit = "0/s")]
async fn none() {}

#[ivy::task(max_concurrency = 0)]
async fn never() {}

#[ivy::task(max_concurrency = "5")]
async fn quoted() {}

fn main() {}
