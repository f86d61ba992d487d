// `crate = "…"` for a renamed dependency.
extern crate ivy as renamed;

#[renamed::task(crate = "::renamed")]
async fn add(x: u64, y: u64) -> u64 {
    x + y
}

fn main() {
    let _: renamed::Call<add> = add::call(1, 2);
    assert!(<add as renamed::Task>::NAME.ends_with(".add"));
}
