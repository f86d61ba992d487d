// `State<T>` parameters, however imported, are left out of `call` and filled by the worker;
// the function is still called with them. Uses no crate but `ivy`.
#![allow(dead_code)]

use std::sync::Arc;

#[derive(Clone)]
struct Pool(Arc<Vec<u64>>);

#[ivy::task]
async fn lookup(pool: ivy::State<Pool>, i: usize) -> u64 {
    pool.0 .0[i]
}

use ivy::State;

#[ivy::task(blocking)]
fn lookup_blocking(i: usize, pool: State<Pool>, offset: u64) -> u64 {
    pool.0 .0[i] + offset
}

fn main() {
    let _: ivy::Call<lookup> = lookup::call(1);
    let _: ivy::Call<lookup_blocking> = lookup_blocking::call(1, 2);
    let _ = lookup(State(Pool(Arc::new(vec![1, 2]))), 1);
}
