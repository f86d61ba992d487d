// Parameters named like the generated code's own locals must neither collide with them nor be
// captured by them: the generated locals are hygienic (`Span::mixed_site()`).
use std::future::Future;

#[ivy::task]
async fn locals(__ivy_args: u64, __ivy_ret: u64, __ivy_failure: u64, e: u64, v: u64) -> u64 {
    __ivy_args * 10_000 + __ivy_ret * 1_000 + __ivy_failure * 100 + e * 10 + v
}

#[ivy::task]
async fn fails(e: u64, v: u64) -> Result<u64, String> {
    Err(format!("{e} {v}"))
}

// Items named like the generated constants, visible where the argument types are written.
const __IVY_NAME_LEN: usize = 3;
const __IVY_PATH: &str = "user";

#[ivy::task]
async fn arrays(bytes: [u8; __IVY_NAME_LEN]) -> String {
    format!("{__IVY_PATH}:{bytes:?}")
}

fn run<T: ivy::Task>(
    args: Vec<(&str, ivy::__private::Value)>,
) -> Result<ivy::__private::Value, ivy::TaskFailure> {
    let map: ivy::__private::Map<String, ivy::__private::Value> =
        args.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let mut fut = std::pin::pin!(T::run(map));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the task waited"),
    }
}

fn main() {
    use ivy::__private::Value;
    let _: ivy::Call<locals> = locals::call(1, 2, 3, 4, 5);
    let out = run::<locals>(vec![
        ("__ivy_args", Value::from(1u64)),
        ("__ivy_ret", Value::from(2u64)),
        ("__ivy_failure", Value::from(3u64)),
        ("e", Value::from(4u64)),
        ("v", Value::from(5u64)),
    ]);
    assert_eq!(out.unwrap(), Value::from(12_345u64));

    let err = run::<fails>(vec![("e", Value::from(1u64)), ("v", Value::from(2u64))]).unwrap_err();
    assert_eq!(err.message, "1 2");

    let _: ivy::Call<arrays> = arrays::call([1, 2, 3]);
    let out = run::<arrays>(vec![("bytes", Value::from(vec![1u8, 2, 3]))]);
    assert_eq!(out.unwrap(), Value::from("user:[1, 2, 3]"));
}
