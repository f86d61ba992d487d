// Each unfit argument type gives one error, at that type.
struct NotSerde;
struct AlsoNot;

#[ivy::task]
async fn take(x: NotSerde, n: u64, y: AlsoNot) -> u64 {
    let _ = (x, y);
    n
}
fn main() {}
