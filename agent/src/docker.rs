//! The local Docker Engine, over its unix socket (bollard): the inventory the agent
//! reports, image export and load, volume lookup, and what keeps a volume read
//! consistent (pausing the containers that use it, or a hook run inside one).
//!
//! Containers the agent pauses are written to `STATE/paused.json` *before* they are
//! paused, and unpaused (and the file removed) when the read ends, whether it succeeded or
//! not. If the agent dies in between, the next start unpauses them ([`Engine::recover`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ExecConfig, VolumeCreateRequest};
use bollard::query_parameters::{
    ImportImageOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    RemoveImageOptionsBuilder, RemoveVolumeOptions, StopContainerOptionsBuilder,
    TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use lifeboat_core::snapshot::ImageInfo;
use lifeboat_proto::pb;

use crate::AgentError;

/// The default Engine socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
const PAUSED_FILE: &str = "paused.json";

/// How the agent reaches Docker, from its own flags.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// `None`: Docker support switched off (`--no-docker`).
    pub socket: Option<PathBuf>,
    /// `--docker-restore`: the agent may load images and write into volumes.
    pub restore_allowed: bool,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: Some(PathBuf::from(DEFAULT_SOCKET)),
            restore_allowed: false,
        }
    }
}

fn err(what: &str, e: bollard::errors::Error) -> AgentError {
    AgentError::Docker(format!("docker: {what}: {e}"))
}

/// A container that mounts a volume.
#[derive(Debug, Clone)]
pub struct VolumeUser {
    pub id: String,
    pub name: String,
    pub running: bool,
}

/// A volume as the Engine reports it.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub name: String,
    pub mountpoint: PathBuf,
    pub users: Vec<VolumeUser>,
}

/// A connected Engine.
pub struct Engine {
    docker: Docker,
    pub restore_allowed: bool,
    state_dir: PathBuf,
    pub version: String,
}

impl Engine {
    /// Connects and asks the Engine's version; the error says plainly why not.
    pub async fn connect(cfg: &DockerConfig, state_dir: &Path) -> Result<Engine, String> {
        let Some(socket) = &cfg.socket else {
            return Err("Docker support is off (--no-docker)".into());
        };
        if !socket.exists() {
            return Err(format!("no Docker Engine socket at {}", socket.display()));
        }
        let path = socket.to_string_lossy();
        let docker = Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION)
            .map_err(|e| format!("cannot use {path}: {e}"))?;
        let v = tokio::time::timeout(Duration::from_secs(10), docker.version())
            .await
            .map_err(|_| format!("the Docker Engine at {path} does not answer"))?
            .map_err(|e| format!("the Docker Engine at {path} refused: {e}"))?;
        Ok(Engine {
            docker,
            restore_allowed: cfg.restore_allowed,
            state_dir: state_dir.to_owned(),
            version: v.version.unwrap_or_default(),
        })
    }

    /// Unpauses containers a killed agent left paused.
    pub async fn recover(&self) {
        let path = self.state_dir.join(PAUSED_FILE);
        let Ok(bytes) = std::fs::read(&path) else {
            return;
        };
        let ids: Vec<String> = serde_json::from_slice(&bytes).unwrap_or_default();
        for id in &ids {
            match self.docker.unpause_container(id).await {
                Ok(()) => {
                    tracing::warn!(container = %id, "unpaused a container a previous run of this agent left paused")
                }
                Err(e) => {
                    tracing::info!(container = %id, error = %e, "could not unpause (already running or gone)")
                }
            }
        }
        let _ = std::fs::remove_file(&path);
    }

    /// Everything that can be backed up, and what runs.
    pub async fn inventory(&self) -> Result<pb::DockerInventory, AgentError> {
        let images = self
            .docker
            .list_images(Some(ListImagesOptionsBuilder::new().all(false).build()))
            .await
            .map_err(|e| err("listing images", e))?;
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
            .await
            .map_err(|e| err("listing containers", e))?;
        let volumes = self
            .docker
            .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
            .await
            .map_err(|e| err("listing volumes", e))?
            .volumes
            .unwrap_or_default();
        let mut used: HashMap<String, Vec<pb::VolumeUser>> = HashMap::new();
        for c in &containers {
            let running = is_running(c);
            for m in c.mounts.iter().flatten() {
                if let Some(v) = &m.name {
                    used.entry(v.clone()).or_default().push(pb::VolumeUser {
                        container: container_name(c),
                        running,
                    });
                }
            }
        }
        Ok(pb::DockerInventory {
            available: true,
            status: format!("Docker Engine {}", self.version),
            restore_allowed: self.restore_allowed,
            images: images
                .into_iter()
                .map(|i| pb::DockerImage {
                    id: i.id,
                    repo_tags: i.repo_tags,
                    repo_digests: i.repo_digests,
                    size: i.size.max(0) as u64,
                    created_unix: i.created,
                })
                .collect(),
            volumes: volumes
                .into_iter()
                .map(|v| pb::DockerVolume {
                    used_by: used.remove(&v.name).unwrap_or_default(),
                    name: v.name,
                    driver: v.driver,
                    mountpoint: v.mountpoint,
                })
                .collect(),
            containers: containers
                .iter()
                .map(|c| pb::DockerContainer {
                    id: c.id.clone().unwrap_or_default(),
                    name: container_name(c),
                    image_id: c.image_id.clone().unwrap_or_default(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                })
                .collect(),
            reported_unix_ms: crate::now_ms(),
        })
    }

    /// The image `reference` (a tag or an id) names, with what a snapshot records.
    pub async fn image(&self, reference: &str) -> Result<ImageInfo, AgentError> {
        let i = self.docker.inspect_image(reference).await.map_err(|e| {
            AgentError::Docker(format!(
                "image {reference:?} is not in this machine's Docker Engine: {e}"
            ))
        })?;
        Ok(ImageInfo {
            id: i.id.unwrap_or_default(),
            repo_tags: i.repo_tags.unwrap_or_default(),
            repo_digests: i.repo_digests.unwrap_or_default(),
            layers: i.root_fs.and_then(|r| r.layers).unwrap_or_default(),
            created: i.created.map(|c| c.to_string()).unwrap_or_default(),
            size: i.size.unwrap_or(0).max(0) as u64,
        })
    }

    /// The image's `docker save` stream (by id, so it is exactly that image).
    pub fn export(&self, id: &str) -> impl Stream<Item = Result<Bytes, AgentError>> + use<> {
        self.docker
            .export_image(id)
            .map(|r| r.map_err(|e| err("exporting the image", e)))
    }

    /// Loads a `docker save` stream; returns the Engine's messages.
    pub async fn load(
        &self,
        tar: impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    ) -> Result<Vec<String>, AgentError> {
        let mut out = Vec::new();
        let mut s = self.docker.import_image_stream(
            ImportImageOptionsBuilder::new().quiet(true).build(),
            tar,
            None,
        );
        while let Some(info) = s.next().await {
            let info = info.map_err(|e| err("loading the image", e))?;
            if let Some(m) = info.stream.or(info.status) {
                out.push(m.trim().to_string());
            }
        }
        Ok(out)
    }

    /// Tags image `id` as `repo:tag`.
    pub async fn tag(&self, id: &str, repo_tag: &str) -> Result<(), AgentError> {
        let (repo, tag) = split_tag(repo_tag);
        self.docker
            .tag_image(
                id,
                Some(TagImageOptionsBuilder::new().repo(repo).tag(tag).build()),
            )
            .await
            .map_err(|e| err(&format!("tagging {id} as {repo_tag}"), e))
    }

    /// Removes an image reference: a tag (the image stays while other tags hold it), or
    /// with `force` an image id and all its tags.
    pub async fn remove_image(&self, reference: &str, force: bool) -> Result<(), AgentError> {
        self.docker
            .remove_image(
                reference,
                Some(RemoveImageOptionsBuilder::new().force(force).build()),
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| err(&format!("removing image {reference}"), e))
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), AgentError> {
        self.docker
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
            .map_err(|e| err(&format!("removing volume {name}"), e))
    }

    /// The volume and the containers that mount it.
    pub async fn volume(&self, name: &str) -> Result<Option<VolumeInfo>, AgentError> {
        let v = match self.docker.inspect_volume(name).await {
            Ok(v) => v,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(None),
            Err(e) => return Err(err(&format!("inspecting volume {name}"), e)),
        };
        let filters = HashMap::from([("volume", vec![name])]);
        let users = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| err("listing containers", e))?
            .iter()
            .map(|c| VolumeUser {
                id: c.id.clone().unwrap_or_default(),
                name: container_name(c),
                running: is_running(c),
            })
            .collect();
        Ok(Some(VolumeInfo {
            name: v.name,
            mountpoint: PathBuf::from(v.mountpoint),
            users,
        }))
    }

    pub async fn create_volume(&self, name: &str) -> Result<VolumeInfo, AgentError> {
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_string()),
                driver: Some("local".into()),
                ..Default::default()
            })
            .await
            .map_err(|e| err(&format!("creating volume {name}"), e))?;
        self.volume(name)
            .await?
            .ok_or_else(|| AgentError::Docker(format!("volume {name} vanished after creation")))
    }

    /// Pauses `ids`, recording them first so that a killed agent's successor unpauses them.
    pub async fn pause(&self, ids: &[String]) -> Result<Paused<'_>, AgentError> {
        let json = serde_json::to_vec(ids).map_err(|e| AgentError::Docker(e.to_string()))?;
        lifeboat_core::durable::write_atomic(&self.state_dir.join(PAUSED_FILE), &json, 0o600)?;
        let guard = Paused {
            engine: self,
            ids: Vec::new(),
        };
        let mut guard = guard;
        for id in ids {
            if let Err(e) = self.docker.pause_container(id).await {
                guard.release().await;
                return Err(err(&format!("pausing container {id}"), e));
            }
            guard.ids.push(id.clone());
        }
        Ok(guard)
    }

    /// Runs `cmd` inside `container`, failing on a non-zero exit or after `timeout`.
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let what = format!("hook {cmd:?} in container {container}");
        let run = async {
            let exec = self
                .docker
                .create_exec(
                    container,
                    ExecConfig {
                        cmd: Some(cmd.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| err(&what, e))?;
            let mut tail = String::new();
            if let StartExecResults::Attached { mut output, .. } = self
                .docker
                .start_exec(&exec.id, None::<StartExecOptions>)
                .await
                .map_err(|e| err(&what, e))?
            {
                while let Some(chunk) = output.next().await {
                    if let Ok(c) = chunk {
                        tail.push_str(&c.to_string());
                        if tail.len() > 2000 {
                            tail.drain(..tail.len() - 2000);
                        }
                    }
                }
            }
            let code = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| err(&what, e))?
                .exit_code
                .unwrap_or(-1);
            if code != 0 {
                return Err(AgentError::Docker(format!(
                    "{what} exited with {code}: {}",
                    tail.trim()
                )));
            }
            Ok(())
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| AgentError::Docker(format!("{what} did not finish within {timeout:?}")))?
    }

    pub async fn stop(&self, id: &str) -> Result<(), AgentError> {
        self.docker
            .stop_container(id, Some(StopContainerOptionsBuilder::new().t(10).build()))
            .await
            .map_err(|e| err(&format!("stopping container {id}"), e))
    }

    pub async fn start(&self, id: &str) -> Result<(), AgentError> {
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| err(&format!("starting container {id}"), e))
    }
}

/// Containers this agent paused; [`Paused::release`] unpauses them.
pub struct Paused<'a> {
    engine: &'a Engine,
    ids: Vec<String>,
}

impl Paused<'_> {
    pub fn containers(&self) -> &[String] {
        &self.ids
    }

    /// Unpauses every container (each attempt is made, whatever the others do) and forgets
    /// the record.
    pub async fn release(self) {
        for id in &self.ids {
            if let Err(e) = self.engine.docker.unpause_container(id).await {
                tracing::error!(container = %id, error = %e, "could not unpause a container");
            }
        }
        let _ = std::fs::remove_file(self.engine.state_dir.join(PAUSED_FILE));
    }
}

fn is_running(c: &bollard::models::ContainerSummary) -> bool {
    matches!(
        c.state,
        Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
            | Some(bollard::models::ContainerSummaryStateEnum::PAUSED)
    )
}

fn container_name(c: &bollard::models::ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| c.id.clone())
        .unwrap_or_default()
}

/// `repo:tag` → (`repo`, `tag`); the tag defaults to `latest`. A registry port
/// (`host:5000/app`) is not a tag.
pub fn split_tag(reference: &str) -> (&str, &str) {
    match reference.rfind(':') {
        Some(i) if !reference[i + 1..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn tags_split_at_the_last_colon_outside_the_registry() {
        assert_eq!(split_tag("app:1.4"), ("app", "1.4"));
        assert_eq!(
            split_tag("reg.example:5000/team/app:2"),
            ("reg.example:5000/team/app", "2")
        );
        assert_eq!(
            split_tag("reg.example:5000/team/app"),
            ("reg.example:5000/team/app", "latest")
        );
        assert_eq!(split_tag("app"), ("app", "latest"));
    }
}
