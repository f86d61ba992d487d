// Durations that do not fit are compile errors at the literal, not a panic of the macro or a
// silently truncated value.
#[ivy::task(timeout = "307445734561825861m")]
async fn minutes() {}

#[ivy::task(retry_backoff = "18446744073709551616s")]
async fn too_many_digits() {}

#[ivy::task(retry_backoff_max = "18446744073709551615s")]
async fn too_many_milliseconds() {}

#[ivy::task(timeout = "5124095576030432h")]
async fn hours() {}

fn main() {}
