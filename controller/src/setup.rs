//! The controller's data directory: created on first start, reused after.
//!
//! ```text
//! DIR/ca.crt, ca.key          the fleet CA (key 0600)
//! DIR/ca-next.crt, .key       during a CA rotation, the new CA (`authority.rs`)
//! DIR/chunk.key               the fleet's chunk-id key (0600)
//! DIR/controller.sign         the controller's ed25519 countersigning key (PKCS#8, 0600)
//! DIR/admin.identity          the first admin operator's identity file (0600)
//! DIR/server.crt, server.key  the controller's TLS certificate, re-issued at every start
//! DIR/controller.json         settings fixed at first start (the store location)
//! DIR/store-key.age           the store's data key, wrapped (age) for the controller and
//!                             for the operator's offline recovery key (0600)
//! DIR/controller-age.key      the controller's age identity, which unwraps it (0600)
//! DIR/catalog.db              the SQLite catalog
//! DIR/store/                  the default store
//! DIR/staging/                an S3 store's packs between seal and upload
//! DIR/audit-head              the audit anchor, when the store is not a local directory
//! ```

use std::path::{Path, PathBuf};

use lifeboat_core::ChunkKey;
use lifeboat_core::age;
use lifeboat_core::durable::write_atomic;
use lifeboat_core::identity::IdentityFile;
use lifeboat_core::pki::{self, Validity};
use lifeboat_core::seal::DataKey;
use lifeboat_core::sign::SigningKey;
use serde::{Deserialize, Serialize};

use crate::authority::Cas;
use crate::catalog::Catalog;
use crate::error::ApiError;
use crate::store::location::{S3Location, S3Options, StoreLocation};

/// The first admin's identity lasts a year (`lifeboat identity create` chooses for the
/// others); agent certificates are short-lived and renewed over the session.
pub const ADMIN_CERT_DAYS: u64 = 365;
pub const DEFAULT_AGENT_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(7 * 86_400);

/// Where a store lies when `--store` is not given, inside the data directory.
const DEFAULT_STORE: &str = "store";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    version: u32,
    /// A directory, or `s3://BUCKET/PREFIX` (then `s3` says how to reach it).
    store: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s3: Option<S3Location>,
    /// Whether the store was created encrypted (every store since 2026-12; older ones
    /// stay plaintext).
    #[serde(default)]
    encrypted: bool,
    /// The recovery key's public half (`age1...`): the data key is wrapped to it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recovery_recipient: Option<String>,
}

impl Settings {
    fn location(&self) -> StoreLocation {
        match &self.s3 {
            Some(s3) => StoreLocation::S3(s3.clone()),
            None => StoreLocation::Local(self.store.clone()),
        }
    }

    fn of(location: &StoreLocation, keys: &KeySettings) -> Settings {
        let (store, s3) = match location {
            StoreLocation::Local(dir) => (dir.clone(), None),
            StoreLocation::S3(s3) => (
                format!("s3://{}/{}", s3.bucket, s3.prefix).into(),
                Some(s3.clone()),
            ),
        };
        Settings {
            version: 1,
            store,
            s3,
            encrypted: keys.encrypted,
            recovery_recipient: keys.recovery_recipient.clone(),
        }
    }
}

/// What the settings say about the store's keys.
#[derive(Clone, Default)]
struct KeySettings {
    encrypted: bool,
    recovery_recipient: Option<String>,
}

/// The store's data key, wrapped for the controller and the recovery key.
pub const STORE_KEY_FILE: &str = "store-key.age";
const CONTROLLER_AGE_KEY: &str = "controller-age.key";

/// Everything loaded from (or created in) the data directory.
pub struct Prepared {
    pub cas: Cas,
    pub chunk_key: ChunkKey,
    /// Countersigns every committed snapshot.
    pub signer: SigningKey,
    pub store: StoreLocation,
    /// `None` for a store created before encryption at rest.
    pub data_key: Option<DataKey>,
    /// The wrapped data key (`DIR/store-key.age`), which the store keeps a copy of.
    pub wrapped_data_key: Option<Vec<u8>>,
    pub recovery_recipient: Option<String>,
    /// Where an S3 store's packs wait between seal and upload.
    pub staging_dir: PathBuf,
    /// Where the audit anchor lives: the store directory, or the data directory when the
    /// store is a bucket.
    pub anchor_dir: PathBuf,
    pub server_chain_pem: String,
    pub server_key_pem: String,
    pub catalog: Catalog,
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> ApiError {
    let msg = format!("{what} {}", path.display());
    move |e| ApiError::internal(format!("{msg}: {e}"))
}

/// Loads the data directory, creating the CA, keys and admin identity on first start.
/// `store` (as `--store` gives it) may only be given on first start or repeated unchanged;
/// the `--s3-*` connection options may change at any start.
pub fn prepare(
    data_dir: &Path,
    store: Option<&str>,
    s3: &S3Options,
    recovery_recipient: Option<&str>,
    show_recovery_key: fn(&str, &str),
) -> Result<Prepared, ApiError> {
    std::fs::create_dir_all(data_dir).map_err(io("creating", data_dir))?;
    restrict_dir(data_dir)?;
    // The countersigning key first: the recovery kit names it.
    let sign_path = data_dir.join("controller.sign");
    let signer = if sign_path.exists() {
        SigningKey::from_pkcs8(&std::fs::read(&sign_path).map_err(io("reading", &sign_path))?)?
    } else {
        let k = SigningKey::generate()?;
        write_atomic(&sign_path, k.pkcs8(), 0o600)?;
        k
    };
    let given = store
        .map(|s| StoreLocation::parse(s, s3))
        .transpose()
        .map_err(ApiError::InvalidArgument)?;
    let settings_path = data_dir.join("controller.json");
    let (location, keys, store_keys) = if settings_path.exists() {
        let saved: Settings = serde_json::from_slice(
            &std::fs::read(&settings_path).map_err(io("reading", &settings_path))?,
        )
        .map_err(|e| ApiError::internal(format!("{}: {e}", settings_path.display())))?;
        let recorded = saved.location();
        let location = match &recorded {
            StoreLocation::S3(loc) => StoreLocation::S3(loc.clone().with_options(s3)),
            // Recorded relative to the data directory (the default, since 2026-12), or
            // absolute (a --store of its own, and every store before).
            StoreLocation::Local(dir) => StoreLocation::Local(data_dir.join(dir)),
        };
        let same = match (&given, &location) {
            (None, _) => true,
            (Some(StoreLocation::Local(a)), StoreLocation::Local(b)) => a == b,
            (Some(StoreLocation::S3(a)), StoreLocation::S3(b)) => a.same_store(b),
            _ => false,
        };
        if !same {
            return Err(ApiError::InvalidArgument(format!(
                "this controller's store is {}; --store {} differs (the store cannot be moved by a flag)",
                saved.store.display(),
                store.unwrap_or_default()
            )));
        }
        let keys = KeySettings {
            encrypted: saved.encrypted,
            recovery_recipient: saved.recovery_recipient.clone(),
        };
        if matches!(location, StoreLocation::S3(_)) && location != recorded {
            write_settings(&settings_path, &location, &keys)?;
        }
        if recovery_recipient.is_some_and(|r| Some(r) != keys.recovery_recipient.as_deref()) {
            return Err(ApiError::InvalidArgument(
                "--recovery-recipient is fixed when the store is created; this store's recovery key is already chosen".into(),
            ));
        }
        let store_keys = if keys.encrypted {
            StoreKeys::load(data_dir)?
        } else {
            tracing::warn!(
                "this store was created before encryption at rest: its packs and envelopes are plaintext"
            );
            StoreKeys::default()
        };
        (location, keys, store_keys)
    } else {
        let location = match given {
            Some(StoreLocation::Local(p)) => {
                StoreLocation::Local(std::path::absolute(&p).map_err(io("resolving", &p))?)
            }
            Some(s3) => s3,
            None => StoreLocation::Local(data_dir.join(DEFAULT_STORE)),
        };
        // Keys first: settings that say "encrypted" always have their key file.
        let store_keys = StoreKeys::create(data_dir, recovery_recipient)?;
        // Shown before the settings make this store real: a start that fails after this
        // point leaves a store whose recovery key the operator has (a start that fails
        // before it leaves no store, and the next start makes a new key).
        let controller_key = hex::encode(signer.public_key());
        match &store_keys.recovery_secret {
            Some(secret) => show_recovery_key(secret, &controller_key),
            None => tracing::info!(
                controller_key = %controller_key,
                "the store's controller key: keep it beside the recovery key; `recover` trusts only controller states it signed"
            ),
        }
        let keys = KeySettings {
            encrypted: true,
            recovery_recipient: store_keys.recovery_recipient.clone(),
        };
        // The default store is recorded relative to the data directory, which can then
        // move (a new disk, a restore of the whole directory elsewhere) with its store.
        let recorded = if location == StoreLocation::Local(data_dir.join(DEFAULT_STORE)) {
            StoreLocation::Local(DEFAULT_STORE.into())
        } else {
            location.clone()
        };
        write_settings(&settings_path, &recorded, &keys)?;
        (location, keys, store_keys)
    };
    let anchor_dir = location
        .local_dir()
        .map_or_else(|| data_dir.to_owned(), Path::to_owned);

    let cas = crate::authority::open(data_dir)?;

    let key_path = data_dir.join("chunk.key");
    let chunk_key = if key_path.exists() {
        ChunkKey::from_slice(&std::fs::read(&key_path).map_err(io("reading", &key_path))?)?
    } else {
        let k = ChunkKey::generate()?;
        write_atomic(&key_path, k.as_bytes(), 0o600)?;
        k
    };

    // From the CA in force (during a rotation, the one every agent trusts).
    let server = cas.current.issue_server()?;
    let server_chain_pem = format!("{}{}", server.cert_pem, cas.current.cert_pem);
    write_atomic(
        &data_dir.join("server.crt"),
        server_chain_pem.as_bytes(),
        0o644,
    )?;
    write_atomic(
        &data_dir.join("server.key"),
        server.key_pem.as_bytes(),
        0o600,
    )?;

    let catalog = Catalog::open(&data_dir.join("catalog.db"))?;
    // A catalog that lists snapshots or chunks of a local store that is not there: never
    // serve it as an empty store (a moved data directory, an unmounted disk).
    if let StoreLocation::Local(dir) = &location
        && !dir.is_dir()
    {
        let (_, snapshots, chunks, _) = catalog.totals()?;
        if snapshots + chunks > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "the store recorded in {} is {}, which is not there, and the catalog lists {snapshots} snapshots in it: if the data directory was moved or restored elsewhere, set \"store\" in that file to where the store is now (\"store\" when it lies inside the data directory) and start again; if it is on a disk that is not mounted, mount it first",
                settings_path.display(),
                dir.display()
            )));
        }
    }
    Ok(Prepared {
        cas,
        chunk_key,
        signer,
        store: location,
        data_key: store_keys.data_key,
        wrapped_data_key: store_keys.wrapped,
        recovery_recipient: keys.recovery_recipient,
        staging_dir: data_dir.join("staging"),
        anchor_dir,
        server_chain_pem,
        server_key_pem: server.key_pem,
        catalog,
    })
}

/// The store's keys as this start found or made them.
#[derive(Default)]
struct StoreKeys {
    data_key: Option<DataKey>,
    wrapped: Option<Vec<u8>>,
    recovery_secret: Option<String>,
    recovery_recipient: Option<String>,
}

impl StoreKeys {
    /// A new store's data key, wrapped for a new controller identity and for the recovery
    /// key: the operator's (`--recovery-recipient`, from `age-keygen` on an offline
    /// machine), or one made now whose secret is shown once and never written.
    fn create(data_dir: &Path, recovery: Option<&str>) -> Result<StoreKeys, ApiError> {
        let (recovery, recovery_secret) = match recovery {
            Some(r) => (
                r.parse::<age::Recipient>()
                    .map_err(|e| ApiError::InvalidArgument(format!("--recovery-recipient: {e}")))?,
                None,
            ),
            None => {
                let id = age::Identity::generate().map_err(age_error)?;
                (id.to_recipient(), Some(id.to_secret_string()))
            }
        };
        let controller = age::Identity::generate().map_err(age_error)?;
        let data_key = DataKey::generate()?;
        let wrapped = age::encrypt(
            data_key.as_bytes(),
            &[controller.to_recipient(), recovery.clone()],
        )
        .map_err(age_error)?;
        write_atomic(
            &data_dir.join(CONTROLLER_AGE_KEY),
            format!(
                "# the Lifeboat controller's age identity: it unwraps {STORE_KEY_FILE}\n# public key: {}\n{}\n",
                controller.to_recipient(),
                controller.to_secret_string()
            )
            .as_bytes(),
            0o600,
        )?;
        write_atomic(&data_dir.join(STORE_KEY_FILE), &wrapped, 0o600)?;
        tracing::info!(recovery_recipient = %recovery, "created the store's data key (encryption at rest)");
        Ok(StoreKeys {
            data_key: Some(data_key),
            wrapped: Some(wrapped),
            recovery_secret,
            recovery_recipient: Some(recovery.to_string()),
        })
    }

    fn load(data_dir: &Path) -> Result<StoreKeys, ApiError> {
        let missing = |what: &Path, e: std::io::Error| {
            ApiError::FailedPrecondition(format!(
                "this store is encrypted and {} cannot be read ({e}): restore the data directory from its backup, or unwrap the data key with the recovery key",
                what.display()
            ))
        };
        let id_path = data_dir.join(CONTROLLER_AGE_KEY);
        let key_path = data_dir.join(STORE_KEY_FILE);
        let identity = std::fs::read_to_string(&id_path).map_err(|e| missing(&id_path, e))?;
        let wrapped = std::fs::read(&key_path).map_err(|e| missing(&key_path, e))?;
        let identity = age::Identity::parse(&identity).map_err(age_error)?;
        let plain = age::decrypt(&wrapped, &identity)
            .map_err(|e| ApiError::FailedPrecondition(format!("{}: {e}", key_path.display())))?;
        Ok(StoreKeys {
            data_key: Some(DataKey::from_slice(&plain)?),
            wrapped: Some(wrapped),
            recovery_secret: None,
            recovery_recipient: None,
        })
    }
}

fn age_error(e: age::AgeError) -> ApiError {
    ApiError::internal(format!("store keys: {e}"))
}

fn write_settings(
    path: &Path,
    location: &StoreLocation,
    keys: &KeySettings,
) -> Result<(), ApiError> {
    let json = serde_json::to_vec_pretty(&Settings::of(location, keys))
        .map_err(|e| ApiError::internal(format!("encoding {}: {e}", path.display())))?;
    Ok(write_atomic(path, &json, 0o600)?)
}

pub(crate) fn restrict_dir(dir: &Path) -> Result<(), ApiError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("restricting", dir))
}

/// Writes `DIR/admin.identity` if it does not exist, or refreshes its controller URL.
pub fn ensure_admin_identity(
    data_dir: &Path,
    prepared: &Prepared,
    url: &str,
) -> Result<PathBuf, ApiError> {
    let path = data_dir.join("admin.identity");
    if path.exists() {
        let mut id = IdentityFile::load(&path)?;
        if id.controller != url {
            id.controller = url.to_string();
            id.save(&path)?;
        }
        return Ok(path);
    }
    let validity = Validity::from_now(pki::days(ADMIN_CERT_DAYS));
    let issuer = prepared.cas.issuer();
    let (cert, serial) = issuer.issue_client("operator:admin", validity)?;
    prepared.catalog.add_operator(
        "admin",
        "admin",
        &serial,
        crate::now_ms(),
        validity.not_after_ms(),
        "setup",
    )?;
    prepared
        .catalog
        .set_operator_cert_ca("admin", &pki::fingerprint(&issuer.cert_pem)?)?;
    IdentityFile {
        version: 1,
        name: "admin".into(),
        role: "admin".into(),
        controller: url.to_string(),
        ca_pem: prepared.cas.trusted_pem(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    }
    .save(&path)?;
    Ok(path)
}

/// Shows a new store's recovery key as a banner on standard output (`serve`,
/// `rebuild-catalog`): `ServeConfig::show_recovery_key`.
pub fn print_recovery_banner(secret: &str, controller_key: &str) {
    println!("{}", recovery_banner(secret, controller_key));
}

/// What a recovery key file may say about its store's controller key (`recover` trusts
/// only the controller states it signed).
pub const KIT_PREFIX: &str = "# lifeboat controller key: ";

/// The recovery kit: the key file to keep, as `recover` reads it.
pub fn recovery_kit(secret: &str, controller_key: &str) -> String {
    format!("{KIT_PREFIX}{controller_key}\n{secret}\n")
}

fn recovery_banner(secret: &str, controller_key: &str) -> String {
    format!(
        "\
================================================================================
RECOVERY KEY of this store (shown once; Lifeboat keeps no copy):
recovery key: {secret}
controller key: {controller_key}
Put both in your vault now, offline, as one key file (the recovery kit):
{}================================================================================
With it and the store alone, the data can be recovered when this machine is lost;
without it, a lost data directory means a store nobody can read. `recover` trusts
only controller states signed by that controller key. `age -d -i KEYFILE
store-key.age` unwraps the data key.
================================================================================",
        recovery_kit(secret, controller_key)
    )
}
