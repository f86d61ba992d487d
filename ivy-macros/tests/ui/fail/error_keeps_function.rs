// On a macro error the function is still emitted, so the only error is the macro's: callers of
// the function do not add "cannot find function" errors (and IDEs keep working).
#[ivy::task(retries = 3)]
async fn add(x: u64, y: u64) -> u64 {
    x + y
}

#[ivy::task]
fn not_async(x: u64) -> u64 {
    x
}

fn main() {
    let _ = add(1, 2);
    let _ = not_async(1);
}
