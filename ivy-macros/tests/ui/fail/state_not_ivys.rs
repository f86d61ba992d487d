// A parameter whose type is named `State` is filled from the worker: one that is not
// `ivy::State<T>` is an error at its type, not a silently missing argument.
struct State<T>(T);

#[ivy::task]
async fn take(x: u64, s: State<u64>) -> u64 {
    x + s.0
}

fn main() {}
