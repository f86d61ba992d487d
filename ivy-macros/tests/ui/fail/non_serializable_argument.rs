struct NotSerde;

#[ivy::task]
async fn take(x: NotSerde) -> u64 {
    let _ = x;
    1
}
fn main() {}
