// A chain step's first parameter must take the previous step's result: `double` takes a
// `u64`, `fetch` returns a `String`.

#[ivy::task]
async fn fetch(url: String) -> String {
    url
}

#[ivy::task]
async fn double(n: u64, times: u32) -> u64 {
    n * u64::from(times)
}

fn main() {
    let _chain = fetch::call("https://example.com".into()).then(double::with(2));
}
