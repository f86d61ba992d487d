// Every supported form, with names the generated code must not trip over. The file uses no
// serde, serde_json or tokio of its own: generated code reaches them through `::ivy`.
#![allow(dead_code)]

// Shadow common names; the generated code must use absolute paths.
type Result<T> = std::result::Result<T, String>;
struct Map;
struct Value;
struct Option;
mod core {}
mod serde {}

#[derive(Debug)]
pub struct MyError;
impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mine")
    }
}
impl std::error::Error for MyError {}

#[ivy::task]
async fn plain(x: u64, y: u64) -> u64 {
    x + y
}

#[ivy::task]
async fn nothing() {}

#[ivy::task(name = "testpackage.factorial", queue = "math", priority = 5, max_retries = 7,
            retry_backoff = "250ms", retry_backoff_max = "1m", timeout = "30s")]
pub async fn factorial(n: u64) -> std::result::Result<u64, MyError> {
    Ok((1..=n).product())
}

#[ivy::task]
async fn alias_result(mut s: String, args: Vec<u8>) -> Result<String> {
    s.push_str(&format!("{}", args.len()));
    Ok(s)
}

#[ivy::task(blocking)]
fn crunch(n: u32) -> u32 {
    n * 2
}

#[ivy::task(rate_limit = "20/s", max_concurrency = 5)]
async fn limited() {}

#[ivy::task(rate_limit = " 3 / h ")]
async fn hourly() {}

#[ivy::task]
async fn r#type(r#in: String) -> String {
    r#in
}

const _: () = {
    assert!(matches!(<factorial as ivy::Task>::OPTIONS.priority, Some(5)));
    assert!(<factorial as ivy::Task>::OPTIONS.max_retries == 7);
    assert!(matches!(<limited as ivy::Task>::OPTIONS.max_concurrency, Some(5)));
    assert!(<factorial as ivy::Task>::OPTIONS.rate_limit.is_none());
};

fn main() {
    // Default names: the module path and function name joined with dots (trybuild names the
    // crate `trybuildNNN`).
    let name = <plain as ivy::Task>::NAME;
    assert!(name.starts_with("trybuild") && name.ends_with(".plain") && !name.contains(':'), "{name}");
    assert_eq!(<factorial as ivy::Task>::NAME, "testpackage.factorial");
    assert_eq!(<factorial as ivy::Task>::OPTIONS.queue, "math");
    let rate = <limited as ivy::Task>::OPTIONS.rate_limit.unwrap();
    assert_eq!((rate.count, rate.per), (20, std::time::Duration::from_secs(1)));
    assert_eq!(rate.to_string(), "20/s");
    let rate = <hourly as ivy::Task>::OPTIONS.rate_limit.unwrap();
    assert_eq!(rate.interval(), std::time::Duration::from_secs(1200));
    assert!(<r#type as ivy::Task>::NAME.ends_with(".type"));
    let _: ivy::Call<plain> = plain::call(1, 2);
    let _: ivy::Call<nothing> = nothing::call();
    let _: ivy::Call<factorial> = factorial::call(5).queue("other").priority(1);
    let _: ivy::Call<alias_result> = alias_result::call("a".into(), vec![1]);
    let _: ivy::Call<crunch> = crunch::call(3);
    // The functions are still plain functions.
    let _ = plain(1, 2);
    assert_eq!(crunch(2), 4);
    let names = ivy::Registry::linked().unwrap().names();
    assert!(names.contains(&"testpackage.factorial"), "{names:?}");
}
