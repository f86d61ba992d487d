// `no_retry_on` is given each error: a task without `Result` has none, and the function must
// take the task's error type.
fn never(_: &std::io::Error) -> bool {
    false
}

#[ivy::task(no_retry_on = never)]
async fn no_result() -> u64 {
    1
}

#[ivy::task(no_retry_on = never)]
async fn other_error() -> Result<u64, String> {
    Ok(1)
}

fn main() {}
