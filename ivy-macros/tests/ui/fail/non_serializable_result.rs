struct NotSerde;

#[ivy::task]
async fn give() -> NotSerde {
    NotSerde
}
fn main() {}
