//! Two tasks with one name are refused when the worker starts, naming the task.

mod a {
    #[ivy::task(name = "dup.task")]
    pub async fn one() {}
}
mod b {
    #[ivy::task(name = "dup.task")]
    pub async fn two() {}
}

#[test]
fn worker_start_refuses_duplicate_names() {
    let err = ivy::Worker::new(
        ivy::memory::MemoryBroker::new(),
        ivy::memory::MemoryNotifier::new(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ivy::Error::DuplicateTask(n) if n == "dup.task"),
        "{err}"
    );
    assert_eq!(err.to_string(), "task name `dup.task` is registered twice");
    // Registering one of them explicitly, twice, is fine.
    let r = ivy::Registry::new()
        .register::<a::one>()
        .unwrap()
        .register::<a::one>()
        .unwrap();
    assert_eq!(r.names(), vec!["dup.task"]);
    assert!(r.register::<b::two>().is_err());
}
