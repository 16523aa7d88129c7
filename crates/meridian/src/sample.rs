//! A deterministic stream of Debezium change events for an `orders` table, with inserts,
//! updates (some moving an order between groups) and deletes followed by tombstones. The
//! generator keeps the table's current rows, which is what an oracle needs.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::json;

pub const COUNTRIES: [&str; 6] = ["DE", "FR", "US", "BR", "JP", "IN"];
pub const STATUSES: [&str; 4] = ["pending", "paid", "shipped", "cancelled"];

/// The stream the sample data is read through.
pub fn stream_ddl(brokers: &str, topic: &str) -> String {
    format!(
        "CREATE EXTERNAL STREAM orders(id int64, customer_id int64, country string, status string, amount int64, quantity int32) \
         SETTINGS type='kafka', brokers='{brokers}', topic='{topic}', data_format='Debezium', primary_key='id'"
    )
}

/// The sample view's SELECT; valid in both Proton's dialect and DuckDB's, so the oracle runs it as is.
pub const VIEW_SELECT: &str = "SELECT country, status, count() AS orders, sum(amount) AS revenue, count(quantity) AS with_quantity FROM orders WHERE status <> 'cancelled' GROUP BY country, status";

pub fn view_ddl(name: &str, regions: &str) -> String {
    format!("CREATE MATERIALIZED VIEW {name} AS {VIEW_SELECT} SETTINGS regions='{regions}'")
}

/// The customers the sample orders name, a table-like Debezium stream the demo joins.
pub fn customers_ddl(brokers: &str, topic: &str) -> String {
    format!(
        "CREATE EXTERNAL STREAM customers(id int64, name string, tier string) \
         SETTINGS type='kafka', brokers='{brokers}', topic='{topic}', data_format='Debezium', primary_key='id'"
    )
}

/// Customers 1 to 450 as Debezium changes (orders name customers 1 to 500, so some have
/// none): created, then some move to another tier and a few are deleted. Deterministic.
pub fn customer_events() -> Vec<Event> {
    const TIERS: [&str; 3] = ["gold", "silver", "bronze"];
    let customer = |id: i64, tier: usize| json!({"id": id, "name": format!("customer-{id}"), "tier": TIERS[tier % TIERS.len()]});
    let key = |id: i64| json!({"id": id}).to_string();
    let mut events: Vec<Event> = (1..=450i64)
        .map(|id| Event {
            key: key(id),
            value: Some(
                json!({"before": null, "after": customer(id, id as usize), "op": "c"}).to_string(),
            ),
        })
        .collect();
    for id in (7..=450i64).step_by(7) {
        let value = json!({"before": customer(id, id as usize), "after": customer(id, id as usize + 1), "op": "u"});
        events.push(Event {
            key: key(id),
            value: Some(value.to_string()),
        });
    }
    for id in (50..=450i64).step_by(50) {
        let value = json!({"before": customer(id, id as usize + usize::from(id % 7 == 0)), "after": null, "op": "d"});
        events.push(Event {
            key: key(id),
            value: Some(value.to_string()),
        });
        events.push(Event {
            key: key(id),
            value: None,
        });
    }
    events
}

/// The oracle's table for the current rows.
pub const ORACLE_TABLE: &str = "CREATE TABLE orders(id BIGINT, customer_id BIGINT, country VARCHAR, status VARCHAR, amount BIGINT, quantity INTEGER)";

#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    pub id: i64,
    pub customer_id: i64,
    pub country: &'static str,
    pub status: &'static str,
    pub amount: i64,
    /// NULL now and then, to exercise count(col) and NULL handling.
    pub quantity: Option<i64>,
}

impl Order {
    fn json(&self) -> serde_json::Value {
        json!({"id": self.id, "customer_id": self.customer_id, "country": self.country, "status": self.status, "amount": self.amount, "quantity": self.quantity})
    }
}

/// One Kafka message: key and value (None for a tombstone).
#[derive(Clone, Debug)]
pub struct Event {
    pub key: String,
    pub value: Option<String>,
}

pub struct OrdersGenerator {
    rng: u64,
    next_id: i64,
    live: BTreeMap<i64, Order>,
}

impl OrdersGenerator {
    pub fn new(seed: u64) -> OrdersGenerator {
        OrdersGenerator {
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            next_id: 1,
            live: BTreeMap::new(),
        }
    }

    fn next(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn random_order(&mut self, id: i64) -> Order {
        Order {
            id,
            customer_id: self.next(500) as i64 + 1,
            country: COUNTRIES[self.next(COUNTRIES.len() as u64) as usize],
            status: STATUSES[self.next(STATUSES.len() as u64) as usize],
            amount: self.next(100_000) as i64 + 100,
            quantity: if self.next(10) == 0 {
                None
            } else {
                Some(self.next(9) as i64 + 1)
            },
        }
    }

    /// The next change: about 55% inserts, 35% updates, 10% deletes (each delete is followed
    /// by its tombstone, as Debezium emits it).
    pub fn next_events(&mut self) -> Vec<Event> {
        let roll = self.next(100);
        let ts_ms = 1_700_000_000_000i64 + self.next_id;
        if roll < 55 || self.live.len() < 10 {
            let id = self.next_id;
            self.next_id += 1;
            let order = self.random_order(id);
            let value = json!({"before": null, "after": order.json(), "op": "c", "ts_ms": ts_ms, "source": {"table": "orders"}});
            self.live.insert(id, order);
            return vec![Event {
                key: json!({"id": id}).to_string(),
                value: Some(value.to_string()),
            }];
        }
        let pick = self.next(self.live.len() as u64) as usize;
        let id = *self
            .live
            .keys()
            .nth(pick)
            .expect("pick is below live.len()");
        let before = self.live[&id].clone();
        if roll < 90 {
            let mut after = self.random_order(id);
            // Keep some updates within the group, so both kinds happen.
            if self.next(2) == 0 {
                after.country = before.country;
                after.status = before.status;
            }
            let value = json!({"before": before.json(), "after": after.json(), "op": "u", "ts_ms": ts_ms, "source": {"table": "orders"}});
            self.live.insert(id, after);
            vec![Event {
                key: json!({"id": id}).to_string(),
                value: Some(value.to_string()),
            }]
        } else {
            self.live.remove(&id);
            let value = json!({"before": before.json(), "after": null, "op": "d", "ts_ms": ts_ms, "source": {"table": "orders"}});
            let key = json!({"id": id}).to_string();
            vec![
                Event {
                    key: key.clone(),
                    value: Some(value.to_string()),
                },
                Event { key, value: None },
            ]
        }
    }

    /// The table's rows now.
    pub fn live(&self) -> impl Iterator<Item = &Order> {
        self.live.values()
    }
}

/// Producer settings for the sample data: idempotent, so retries never duplicate a change.
pub fn producer(brokers: &str) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create()
}

/// Sends events, keeping at most `IN_FLIGHT_MAX` unacknowledged. Returns how many were sent.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    events: &[Event],
) -> Result<usize, String> {
    /// Bounds the producer's memory; librdkafka batches within it.
    const IN_FLIGHT_MAX: usize = 2_000;
    for chunk in events.chunks(IN_FLIGHT_MAX) {
        let mut futures = Vec::with_capacity(chunk.len());
        for e in chunk {
            let mut record: FutureRecord<'_, String, String> = FutureRecord::to(topic).key(&e.key);
            if let Some(v) = &e.value {
                record = record.payload(v);
            }
            let f = producer
                .send_result(record)
                .map_err(|(err, _)| format!("enqueue failed: {err}"))?;
            futures.push(f);
        }
        for f in futures {
            match f.await {
                Ok(Ok(_)) => {}
                Ok(Err((err, _))) => return Err(format!("delivery failed: {err}")),
                Err(_) => return Err("delivery cancelled".into()),
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("flush failed: {e}"))?;
    Ok(events.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_tracks_live_rows() {
        let mut a = OrdersGenerator::new(7);
        let mut b = OrdersGenerator::new(7);
        let mut deletes = 0;
        for _ in 0..2_000 {
            let ea = a.next_events();
            let eb = b.next_events();
            assert_eq!(
                ea.iter().map(|e| (&e.key, &e.value)).collect::<Vec<_>>(),
                eb.iter().map(|e| (&e.key, &e.value)).collect::<Vec<_>>()
            );
            if ea.len() == 2 {
                deletes += 1;
                assert!(ea[1].value.is_none(), "a delete is followed by a tombstone");
            }
        }
        assert!(deletes > 50, "deletes happen: {deletes}");
        assert!(a.live().count() > 500);
    }
}
