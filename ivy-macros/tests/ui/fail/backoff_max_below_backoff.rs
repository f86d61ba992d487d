#[ivy::task(retry_backoff = "5s", retry_backoff_max = "1s")]
async fn add(x: u64, y: u64) -> u64 {
    x + y
}

#[ivy::task(retry_backoff_max = "500ms", max_retries = 2, retry_backoff = "1m")]
async fn sub(x: u64, y: u64) -> u64 {
    x - y
}

fn main() {}
