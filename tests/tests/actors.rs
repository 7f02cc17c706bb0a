//! Actors against real processes (issue 30, in progress): the
//! `skiff-placement` binary disseminating to sidecars' placement views.
//! The views run in this test's process (the actor runtime is not wired
//! into skiffd yet); placement is the real binary, killed and restarted
//! by PID.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use skiff_dataplane::blocks::actors::placement::{Addresses, View, connect_and_follow};
use skiff_proto::placement::Host;
use skiff_tests::{Proc, bin, free_port, log_sink, wait_port_of};

fn placement(port: u16) -> Proc {
    let child = Command::new(bin("skiff-placement"))
        .args(["--port", &port.to_string(), "--listen-address", "127.0.0.1"])
        .args(["--disseminate-timeout", "2s"])
        .stdout(log_sink())
        .stderr(log_sink())
        .spawn()
        .expect("start skiff-placement");
    let mut p = Proc {
        child,
        name: "skiff-placement".into(),
    };
    wait_port_of(&mut p, port);
    p
}

fn me(name: &str, types: &[&str]) -> Host {
    Host {
        name: name.into(),
        id: format!("app-{name}"),
        entities: types.iter().map(|t| (*t).to_owned()).collect(),
        namespace: "default".into(),
        ..Default::default()
    }
}

/// Waits until every view finished a round after `after` and they agree.
async fn settled(views: &[&View], after: &[u64]) {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = views[0].version();
        let fresh = views.iter().zip(after).all(|(x, a)| x.rounds() > *a);
        if fresh && views.iter().all(|x| x.ready() && x.version() == v) {
            return;
        }
        assert!(tokio::time::Instant::now() < end, "the views never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_restarts_and_the_sidecars_recover_by_themselves() {
    let port = free_port();
    let mut p = placement(port);
    let at = Addresses::Listed(vec![format!("127.0.0.1:{port}")]);
    let host = Arc::new(View::default());
    let caller = Arc::new(View::default());
    let tasks = [
        tokio::spawn(connect_and_follow(
            at.clone(),
            me("h:1", &["Cart"]),
            host.clone(),
        )),
        tokio::spawn(connect_and_follow(
            at.clone(),
            me("c:1", &[]),
            caller.clone(),
        )),
    ];
    settled(&[&host, &caller], &[0, 0]).await;
    let wait = Duration::from_secs(5);
    assert_eq!(
        caller.owner("Cart", "1", wait).await.expect("owner").name,
        "h:1"
    );

    // Placement dies: both say so (not ready) at once, and calls go on
    // with the table they had.
    p.kill();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while host.ready() || caller.ready() {
        assert!(tokio::time::Instant::now() < end, "a view stayed ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        caller.owner("Cart", "2", wait).await.expect("owner").name,
        "h:1"
    );

    // Placement comes back (a new process, nothing kept): the sidecars
    // reconnect by themselves and the table is rebuilt from them.
    let before = [host.rounds(), caller.rounds()];
    let mut p = placement(port);
    settled(&[&host, &caller], &before).await;
    assert_eq!(
        caller.owner("Cart", "3", wait).await.expect("owner").name,
        "h:1"
    );
    for t in tasks {
        t.abort();
    }
    p.kill();
}
