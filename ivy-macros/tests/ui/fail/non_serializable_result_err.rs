// The `Ok` type of a `Result` is what travels back; an unfit one gives one error at the type.
struct NotSerde;

#[ivy::task]
async fn give() -> Result<NotSerde, String> {
    Ok(NotSerde)
}
fn main() {}
