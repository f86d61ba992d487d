// Typed chains: `with` takes every argument but the first, which the previous result fills.

#[ivy::task]
async fn fetch(url: String) -> String {
    url
}

#[ivy::task]
async fn parse(html: String, limit: usize) -> Result<Vec<String>, std::io::Error> {
    Ok(html.split(' ').take(limit).map(str::to_owned).collect())
}

#[ivy::task]
async fn count(words: Vec<String>) -> usize {
    words.len()
}

fn main() {
    let chain: ivy::Chain<fetch, count> = fetch::call("a b c".into())
        .then(parse::with(2))
        .then(count::with());
    assert!(!chain.id().is_empty());
}
