// `crate = "…"` for a renamed dependency.
extern crate ivy as renamed;
// `::ivy` now names another crate, so generated code that ignored `crate = "…"` would not compile.
extern crate core as ivy;

#[renamed::task(crate = "::renamed")]
async fn add(x: u64, y: u64) -> u64 {
    x + y
}

#[renamed::task(crate = "::renamed")]
async fn fallible(x: u64) -> Result<u64, String> {
    Ok(x)
}

fn main() {
    let _: renamed::Call<add> = add::call(1, 2);
    let _: renamed::Call<fallible> = fallible::call(1);
    assert!(<add as renamed::Task>::NAME.ends_with(".add"));
}
