#[ivy::task]
async fn id<T: serde::Serialize>(x: T) -> T {
    x
}
fn main() {}
