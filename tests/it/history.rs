//! Reading history back: the one `points` function the API and the charts share, on both
//! engines.

use fleet::model::{BatchBody, Record, Sample};
use fleet::store::durable::Resolution;

use crate::both_backends;
use crate::harness::{Backend, Batch, Env, InProcess, node};

const KEY: &str = "0123456789abcdef0123456789abcdef";

/// Two checks of one agent, each its own record of the `check` collector, check `b` always a
/// millisecond after `a`: the newest record of every bucket is `b`'s. Thinned to minutes, each
/// check still has a point in every minute, and it is that check's newest.
async fn thinning_keeps_every_item_of_a_collector_that_sends_one_record_per_item(backend: Backend) {
    let env = Env::new(backend).await;
    let mut config = env.controller_config();
    config.nodes = vec![node("web1", KEY, &[])];
    let ctl = InProcess::start(config).await;
    let client = ctl.client();
    let interval_ms = 10_000;
    let minute = 60_000;
    // Two hours of ticks ending at a minute's end, so every bucket is whole (b's last record,
    // a millisecond later, is the next minute's, outside the range read).
    let end = fleet::timefmt::now_ms() / minute * minute - 1;
    let ticks = 720;
    let start = end - (ticks - 1) * interval_ms;
    let record = |check: &str, ts: i64, up: f64| Record {
        collector: "check".into(),
        ts,
        data: serde_json::json!({ "check": check }),
        samples: vec![Sample::new("check.up", up).with_label("check", check)],
    };
    for (seq, chunk) in (0..ticks).collect::<Vec<_>>().chunks(60).enumerate() {
        let mut records = Vec::new();
        for tick in chunk {
            let ts = start + tick * interval_ms;
            // `a` alternates 0 and 1 by tick, so its newest in a minute is its last tick's.
            records.push(record("a", ts, (tick % 2) as f64));
            records.push(record("b", ts + 1, 1.0));
        }
        let body = BatchBody {
            interval_ms: interval_ms as u64,
            dropped_batches: 0,
            records,
        };
        let batch =
            Batch::new("web1", KEY, seq as u64 + 1).body(serde_json::to_vec(&body).unwrap());
        assert_eq!(client.send(&batch).await.0, 200);
    }
    let series = ctl.store.series("web1", Some("check.up")).await.unwrap();
    assert_eq!(series.len(), 2);
    let ids: Vec<i64> = series.iter().map(|s| s.id).collect();
    let read = |bucket_ms: i64, interval_ms: i64| {
        ctl.store.points(
            "web1",
            "check",
            &ids,
            start,
            end,
            Resolution::Buckets {
                bucket_ms,
                interval_ms,
            },
        )
    };
    let lists = read(minute, interval_ms).await.unwrap();
    let a = &lists[series
        .iter()
        .position(|s| s.labels["check"] == "a")
        .unwrap()];
    let b = &lists[series
        .iter()
        .position(|s| s.labels["check"] == "b")
        .unwrap()];
    assert_eq!(b.len(), 120, "one point of b per minute");
    assert_eq!(a.len(), 120, "one point of a per minute too: {a:?}");
    for (ts, value) in a {
        assert_eq!(
            (ts + 1) % minute,
            0,
            "a's newest tick of its minute, the last of it"
        );
        let tick = (ts - start) / interval_ms;
        assert_eq!(*value, (tick % 2) as f64);
    }
    // Buckets of three ticks are read as one range, not bucket by bucket: the same answer.
    let lists = read(30_000, interval_ms).await.unwrap();
    assert_eq!(
        lists.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![240, 240],
        "one point of each check per 30 s"
    );
    // A node claiming a far longer interval than it sends at: the range holds more rows than
    // a direct read takes, so it is read bucket by bucket, with the same answer.
    let lists = read(minute, 86_400_000).await.unwrap();
    assert_eq!(
        lists.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![120, 120],
        "one point of each check per minute"
    );
    // Every point, newest records first, as the API reads them.
    let newest = ctl
        .store
        .points(
            "web1",
            "check",
            &ids,
            start,
            end + 1,
            Resolution::Newest(10),
        )
        .await
        .unwrap();
    assert_eq!(newest.iter().map(Vec::len).sum::<usize>(), 10);
    ctl.stop().await;
}

both_backends!(thinning_keeps_every_item_of_a_collector_that_sends_one_record_per_item);
