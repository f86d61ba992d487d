struct S;
impl S {
    #[ivy::task]
    async fn run(&self, x: u64) -> u64 {
        x
    }
}
fn main() {}
