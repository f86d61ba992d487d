#[ivy::task(timeout = "soon", priority = 12, name = "has space")]
async fn add(x: u64, y: u64) -> u64 {
    x + y
}
fn main() {}
