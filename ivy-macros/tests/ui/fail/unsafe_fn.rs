#[ivy::task]
async unsafe fn danger(x: u64) -> u64 {
    x
}
fn main() {}
