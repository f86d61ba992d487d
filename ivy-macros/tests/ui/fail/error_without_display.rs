// A task's error type needs `Display`: one error, at the type, naming the trait.
struct Oops;

#[ivy::task]
async fn fails() -> Result<u32, Oops> {
    Err(Oops)
}
fn main() {}
