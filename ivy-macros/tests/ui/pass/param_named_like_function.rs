// A parameter may carry its function's name: the generated worker side must still call the
// function, not the decoded argument.
use std::future::Future;

#[ivy::task]
async fn add(add: u64) -> u64 {
    add + 1
}

#[ivy::task(blocking)]
fn double(double: u64) -> u64 {
    double * 2
}

/// Runs a task the way a worker does, on arguments given as JSON values. The futures here never
/// wait, so a no-op waker is enough and the test needs no runtime.
fn run<T: ivy::Task>(args: &[(&str, u64)]) -> ivy::__private::Value {
    let mut map = ivy::__private::Map::new();
    for (name, value) in args {
        map.insert(name.to_string(), ivy::__private::Value::from(*value));
    }
    let mut fut = std::pin::pin!(T::run(map));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => out.expect("the task succeeds"),
        std::task::Poll::Pending => panic!("the task waited"),
    }
}

fn main() {
    let _: ivy::Call<add> = add::call(1);
    let _: ivy::Call<double> = double::call(1);
    assert_eq!(run::<add>(&[("add", 41)]), ivy::__private::Value::from(42u64));
    assert_eq!(double(4), 8);
    let mut plain = std::pin::pin!(add(1));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert_eq!(plain.as_mut().poll(&mut cx), std::task::Poll::Ready(2));
}
