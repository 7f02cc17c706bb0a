//! `bindings.mqtt3` (Dapr's type, input and output) on an MQTT 3.1.1
//! broker: `url` (`tcp://[user:pass@]host:port`), `topic`, `consumerID`
//! (the client id; the producer is `<consumerID>-producer`), `qos`
//! (default 1), `retain`, `cleanSession` (default false). Input subscribes
//! to `topic` and acknowledges a message only after the app took it
//! (manual acks), so a message the app did not take comes back from the
//! broker; each event's metadata holds its `topic`. Output `create`
//! publishes its data to `topic` (or `metadata.topic`), `metadata.retain`
//! overriding the default. The client reconnects with backoff. Plain TCP
//! in this build (no `ssl://`).

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::{BindingError, InputBinding, Metadata, OutputBinding, Request, Response, deliver};
use crate::{BoxFuture, MetadataError, Properties};

/// Backoff between reconnects: from this...
const RETRY_MIN: Duration = Duration::from_millis(100);
/// ...to this.
const RETRY_MAX: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(10);

struct Settings {
    host: String,
    port: u16,
    login: Login,
    topic: String,
    client_id: String,
    qos: QoS,
    retain: bool,
    clean: bool,
}

/// User and password from the URL.
type Login = Option<(String, String)>;

fn parse_url(url: &str) -> Result<(String, u16, Login), MetadataError> {
    let bad = |why: &str| MetadataError {
        field: "url".into(),
        why: why.into(),
    };
    let rest = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("mqtt://"))
        .ok_or_else(|| {
            bad("must be tcp://host:port (ssl:// is not supported by this build yet)")
        })?;
    let (login, hostport) = match rest.rsplit_once('@') {
        Some((l, h)) => {
            let (u, p) = l.split_once(':').unwrap_or((l, ""));
            (Some((u.to_owned(), p.to_owned())), h)
        }
        None => (None, rest),
    };
    let hostport = hostport.trim_end_matches('/');
    let (h, p) = hostport.rsplit_once(':').unwrap_or((hostport, "1883"));
    let port = p
        .parse()
        .map_err(|_| bad("has a port that is not a number"))?;
    Ok((h.trim_matches(['[', ']']).to_owned(), port, login))
}

impl Settings {
    fn from(meta: &Properties) -> Result<Self, MetadataError> {
        let (host, port, login) = parse_url(meta.required("url")?)?;
        let qos = match meta.int_or("qos", 1u8)? {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => {
                return Err(MetadataError {
                    field: "qos".into(),
                    why: "must be 0, 1 or 2".into(),
                });
            }
        };
        Ok(Self {
            host,
            port,
            login,
            topic: meta.required("topic")?.to_owned(),
            client_id: meta.required("consumerID")?.to_owned(),
            qos,
            retain: meta.bool_or("retain", false)?,
            clean: meta.bool_or("cleanSession", false)?,
        })
    }

    fn options(&self, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, &self.host, self.port);
        o.set_keep_alive(KEEP_ALIVE);
        o.set_clean_session(self.clean);
        if let Some((u, p)) = &self.login {
            o.set_credentials(u, p);
        }
        o
    }
}

pub struct MqttBinding {
    s: Settings,
    producer: AsyncClient,
}

impl MqttBinding {
    pub fn open(meta: &Properties) -> Result<Arc<Self>, MetadataError> {
        let s = Settings::from(meta)?;
        let (producer, events) =
            AsyncClient::new(s.options(&format!("{}-producer", s.client_id)), 64);
        tokio::spawn(drive(events));
        Ok(Arc::new(Self { s, producer }))
    }
}

/// Keeps the producer's connection going (rumqttc reconnects on poll).
async fn drive(mut events: EventLoop) {
    let mut wait = RETRY_MIN;
    loop {
        match events.poll().await {
            Ok(_) => wait = RETRY_MIN,
            Err(e) => {
                tracing::debug!(error = %e, "bindings.mqtt3: producer connection failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

impl OutputBinding for MqttBinding {
    fn operations(&self) -> &'static [&'static str] {
        &["create"]
    }

    fn invoke(&self, req: Request) -> BoxFuture<'_, Result<Response, BindingError>> {
        Box::pin(async move {
            if req.operation != "create" {
                return Err(BindingError::Invalid(format!(
                    "operation {:?} is not supported (create)",
                    req.operation
                )));
            }
            let topic = req
                .metadata
                .get("topic")
                .cloned()
                .unwrap_or_else(|| self.s.topic.clone());
            let retain = req
                .metadata
                .get("retain")
                .map_or(self.s.retain, |v| v == "true");
            self.producer
                .publish(topic, self.s.qos, retain, req.data.to_vec())
                .await
                .map_err(|e| BindingError::Backend(format!("mqtt: {e}")))?;
            Ok(Response::default())
        })
    }
}

impl InputBinding for MqttBinding {
    fn read(&self, events: mpsc::Sender<super::Event>) -> BoxFuture<'_, Result<(), BindingError>> {
        Box::pin(async move {
            let mut o = self.s.options(&self.s.client_id);
            o.set_manual_acks(true);
            let (client, mut el) = AsyncClient::new(o, 64);
            let mut wait = RETRY_MIN;
            loop {
                let polled = tokio::select! {
                    e = el.poll() => e,
                    () = events.closed() => return Ok(()),
                };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        wait = RETRY_MIN;
                        // (Re)subscribe on every connect: a clean session forgets.
                        let c = client.clone();
                        let (topic, qos) = (self.s.topic.clone(), self.s.qos);
                        tokio::spawn(async move {
                            if let Err(e) = c.subscribe(topic, qos).await {
                                tracing::warn!(error = %e, "bindings.mqtt3: subscribing failed");
                            }
                        });
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut md = Metadata::new();
                        md.insert("topic".into(), p.topic.clone());
                        // Acked only once the app answered; meanwhile the
                        // event loop keeps the connection alive.
                        let (c, ev) = (client.clone(), events.clone());
                        let data = bytes::Bytes::copy_from_slice(&p.payload);
                        tokio::spawn(async move {
                            if let Some(Ok(())) = deliver(&ev, data, md).await {
                                let _ = c.ack(&p).await;
                            }
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "bindings.mqtt3: connection failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = events.closed() => return Ok(()),
                        }
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("tcp://h:1884").expect("ok"),
            ("h".into(), 1884, None)
        );
        assert_eq!(
            parse_url("tcp://u:p@h:1").expect("ok").2,
            Some(("u".into(), "p".into()))
        );
        assert_eq!(parse_url("tcp://h").expect("ok").1, 1883);
        assert!(parse_url("ssl://h:1").is_err());
    }
}
