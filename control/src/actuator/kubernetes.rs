//! The Kubernetes actuator: the bridge fleet is a StatefulSet whose pods register with their
//! pod name as bridge id (`NAME-0`, `NAME-1`, ...). Scaling up raises the replica count through
//! the scale subresource; scaling down removes the drained pod by lowering it by one, which a
//! StatefulSet does by deleting its highest ordinal. So only that pod is offered to the
//! scale-down ([`Actuator::removable`]): the pod removed is always the one that was drained,
//! never an arbitrary one. (Removing any ordinal needs OpenKruise's Advanced StatefulSet
//! `reserveOrdinals`; not done.)
//!
//! Every call to the API server has a deadline; nothing here is called with a lock held.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Api, Patch, PatchParams};

use crate::actuator::{Actuator, BoxFuture};

/// Settings of the [`KubernetesActuator`].
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Namespace of the StatefulSet.
    pub namespace: String,
    /// Name of the StatefulSet.
    pub statefulset: String,
    /// API server URL; `None`: in-cluster service account, else the kubeconfig.
    pub api_url: Option<String>,
    /// Deadline of each API call.
    pub timeout: Duration,
}

/// Sets the replica count of the bridge StatefulSet.
pub struct KubernetesActuator {
    cfg: KubernetesConfig,
    api: Api<StatefulSet>,
    /// Replicas as last read or set.
    replicas: Mutex<u32>,
}

impl std::fmt::Debug for KubernetesActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesActuator")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl KubernetesActuator {
    /// Connects and reads the StatefulSet's current scale.
    pub async fn connect(cfg: KubernetesConfig) -> anyhow::Result<Self> {
        let config = match &cfg.api_url {
            Some(url) => kube::Config::new(
                url.parse()
                    .map_err(|e| anyhow::anyhow!("--k8s-api {url}: {e}"))?,
            ),
            None => kube::Config::infer().await.map_err(|e| {
                anyhow::anyhow!(
                    "no Kubernetes API: not in a cluster and no kubeconfig ({e}); set --k8s-api"
                )
            })?,
        };
        let client = kube::Client::try_from(config)?;
        let api = Api::namespaced(client, &cfg.namespace);
        let me = Self {
            cfg,
            api,
            replicas: Mutex::new(0),
        };
        let r = me.read().await?;
        tracing::info!(statefulset = %me.cfg.statefulset, namespace = %me.cfg.namespace, replicas = r, "kubernetes actuator ready");
        Ok(me)
    }

    fn cached(&self) -> u32 {
        *self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pod(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cfg.statefulset)
    }

    /// Reads the scale subresource.
    async fn read(&self) -> anyhow::Result<u32> {
        let name = &self.cfg.statefulset;
        let scale = tokio::time::timeout(self.cfg.timeout, self.api.get_scale(name))
            .await
            .map_err(|_| anyhow::anyhow!("reading the scale of statefulset {name}: timed out"))?
            .map_err(|e| anyhow::anyhow!("reading the scale of statefulset {name}: {e}"))?;
        let r = scale.spec.and_then(|s| s.replicas).unwrap_or(0).max(0) as u32;
        *self.replicas.lock().unwrap_or_else(|e| e.into_inner()) = r;
        Ok(r)
    }

    /// Sets the replica count.
    async fn set(&self, replicas: u32) -> anyhow::Result<()> {
        let name = &self.cfg.statefulset;
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        let pp = PatchParams::default();
        tokio::time::timeout(
            self.cfg.timeout,
            self.api.patch_scale(name, &pp, &Patch::Merge(&patch)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("scaling statefulset {name}: timed out"))?
        .map_err(|e| anyhow::anyhow!("scaling statefulset {name} to {replicas}: {e}"))?;
        *self.replicas.lock().unwrap_or_else(|e| e.into_inner()) = replicas;
        tracing::info!(statefulset = %name, replicas, "statefulset scaled");
        Ok(())
    }
}

impl Actuator for KubernetesActuator {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn booting(&self, registered: &HashSet<String>) -> u32 {
        (0..self.cached())
            .filter(|o| !registered.contains(&self.pod(*o)))
            .count() as u32
    }

    fn removable(&self, bridge: &str) -> bool {
        let r = self.cached();
        r > 0 && bridge == self.pod(r - 1)
    }

    fn start(&self, n: u32) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            let r = self.read().await?;
            self.set(r + n).await
        })
    }

    fn remove<'a>(&'a self, bridge: &'a str) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let r = self.read().await?;
            if r == 0 || bridge != self.pod(r - 1) {
                // Lowering the count would delete another pod, with its conferences.
                return Ok(false);
            }
            self.set(r - 1).await?;
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    /// A local HTTP server that answers the StatefulSet scale endpoints like an API server and
    /// records (method, path, body) of each request.
    /// (method, path, body) of each request the fake API server saw.
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

    fn api_server(replicas: u32) -> (String, Seen) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut replicas = replicas;
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("").to_string(),
                        parts.next().unwrap_or("").to_string(),
                    );
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let body = String::from_utf8(body).unwrap();
                    let ok =
                        path.starts_with("/apis/apps/v1/namespaces/media/statefulsets/jvb/scale");
                    if ok && method == "PATCH" {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        replicas = v["spec"]["replicas"].as_u64().unwrap() as u32;
                    }
                    log.lock().unwrap().push((method, path, body));
                    let (status, payload) = if ok {
                        (
                            "200 OK",
                            serde_json::json!({
                                "apiVersion": "autoscaling/v1", "kind": "Scale",
                                "metadata": {"name": "jvb", "namespace": "media"},
                                "spec": {"replicas": replicas},
                                "status": {"replicas": replicas}
                            })
                            .to_string(),
                        )
                    } else {
                        ("404 Not Found", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"not found","reason":"NotFound","code":404}"#.to_string())
                    };
                    let _ = write!(
                        w,
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{payload}",
                        payload.len()
                    );
                }
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn scales_the_statefulset_and_removes_only_the_drained_highest_ordinal() {
        let (url, seen) = api_server(2);
        let a = KubernetesActuator::connect(KubernetesConfig {
            namespace: "media".into(),
            statefulset: "jvb".into(),
            api_url: Some(url),
            timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
        assert_eq!(a.cached(), 2);
        // jvb-1 has not registered yet: it is booting.
        let registered: HashSet<String> = ["jvb-0".to_string()].into();
        assert_eq!(a.booting(&registered), 1);
        a.start(2).await.unwrap();
        assert_eq!(a.cached(), 4);
        {
            let s = seen.lock().unwrap();
            let (m, p, b) = s.last().unwrap();
            assert_eq!(m, "PATCH");
            assert!(p.starts_with("/apis/apps/v1/namespaces/media/statefulsets/jvb/scale"));
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(b).unwrap(),
                serde_json::json!({"spec": {"replicas": 4}})
            );
        }
        // Only the highest ordinal can go without deleting another pod.
        assert!(a.removable("jvb-3"));
        assert!(!a.removable("jvb-1"));
        let before = seen.lock().unwrap().len();
        assert!(!a.remove("jvb-1").await.unwrap(), "not the highest ordinal");
        assert!(
            seen.lock().unwrap()[before..]
                .iter()
                .all(|(m, _, _)| m == "GET"),
            "no scale change for another pod"
        );
        assert!(a.remove("jvb-3").await.unwrap());
        let s = seen.lock().unwrap();
        let (m, _, b) = s.last().unwrap();
        assert_eq!(m, "PATCH");
        assert!(b.contains("\"replicas\":3"), "{b}");
        assert_eq!(a.cached(), 3);
    }

    #[tokio::test]
    async fn an_unknown_statefulset_is_a_clear_error() {
        let (url, _) = api_server(1);
        let e = KubernetesActuator::connect(KubernetesConfig {
            namespace: "media".into(),
            statefulset: "nope".into(),
            api_url: Some(url),
            timeout: Duration::from_secs(5),
        })
        .await
        .unwrap_err();
        assert!(e.to_string().contains("statefulset nope"), "{e}");
    }
}
