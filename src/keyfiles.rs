//! The keys directory: the Ed25519 signing key, the key-encryption key and the subject index
//! key, each a file of 64 hex digits, mode 0600, in a directory of mode 0700. A public copy of
//! the signing key (`signing.pub`) sits beside them for auditors.
//!
//! Errors name the file and what is wrong with it, never its contents.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::bundle::KeyLine;
use crate::crypto::{LedgerSigningKey, PublicKey, SubjectIndexKey};
use crate::entry::LedgerId;
use crate::verify::{KeyRange, TrustedKeys};

/// Private signing key file name.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// Public signing key file name.
pub const SIGNING_PUB_FILE: &str = "signing.pub";
/// Key-encryption key file name.
/// The single KEK of a ledger made before KEK epochs; adopted as epoch 1 at the first start.
pub const KEK_FILE: &str = "kek.key";
/// Subject index key file name.
pub const INDEX_KEY_FILE: &str = "index.key";
/// The ledger's identity (32 hex digits; public, but it must not change).
pub const LEDGER_ID_FILE: &str = "ledger.id";
/// A signing key waiting to be rotated in (written by `rotate-signing-key`, consumed by the
/// service that records the rotation).
pub const NEXT_SIGNING_KEY_FILE: &str = "signing.next.key";
/// Directory of retired signing keys' public halves, each `<key_id>.json`: a key line with the
/// exact range the key signed (docs/FORMAT.md), written at rotation.
pub const RETIRED_DIR: &str = "retired";
/// The secret files every keys directory holds; the KEKs live in `epochs/` (crate::epochs).
const SECRET_FILES: [&str; 2] = [SIGNING_KEY_FILE, INDEX_KEY_FILE];

/// Why the keys could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A key file that should be there is not.
    #[error(
        "key file {0} is missing (run `auditledger keygen` or restore it from your key backup)"
    )]
    Missing(PathBuf),
    /// Some key files exist and others do not: refuse to guess.
    #[error(
        "keys directory {dir} is incomplete: {missing} is missing but other key files exist; restore it from your key backup"
    )]
    Incomplete {
        /// The directory.
        dir: PathBuf,
        /// The missing file.
        missing: PathBuf,
    },
    /// A key file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A key file that is not 64 hex digits.
    #[error("key file {0} is malformed: expected 64 hex digits")]
    Malformed(PathBuf),
    /// `keygen` refuses to replace existing keys.
    #[error("key file {0} already exists; refusing to overwrite it")]
    AlreadyExists(PathBuf),
}

/// The service's secret keys, loaded into zeroizing buffers.
pub struct KeyMaterial {
    /// Signs entries.
    pub signing: LedgerSigningKey,
    /// Keys the subject index.
    pub index: SubjectIndexKey,
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyMaterial({:?})", self.signing)
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

fn read_hex32(path: &Path) -> Result<Zeroizing<[u8; 32]>, KeyFileError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            KeyFileError::Missing(path.to_owned())
        } else {
            io_err(path)(e)
        }
    })?);
    let mut out = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), out.as_mut())
        .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
    Ok(out)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeyFileError::AlreadyExists(path.to_owned())
            } else {
                io_err(path)(e)
            }
        })?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

fn write_secret(path: &Path, key: &[u8; 32]) -> Result<(), KeyFileError> {
    let mut text = Zeroizing::new(hex::encode(key));
    text.push('\n');
    write_new(path, text.as_bytes(), 0o600)
}

/// Creates a fresh set of keys in `dir`, refusing to overwrite any existing key file.
pub fn create(dir: &Path) -> Result<KeyMaterial, KeyFileError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    for name in SECRET_FILES {
        let p = dir.join(name);
        if p.exists() {
            return Err(KeyFileError::AlreadyExists(p));
        }
    }
    let keys = KeyMaterial {
        signing: LedgerSigningKey::generate(),
        index: SubjectIndexKey::generate(),
    };
    write_secret(&dir.join(SIGNING_KEY_FILE), &keys.signing.seed())?;
    write_secret(&dir.join(INDEX_KEY_FILE), keys.index.expose())?;
    let public = format!("{}\n", hex::encode(keys.signing.public_key().to_bytes()));
    let pub_path = dir.join(SIGNING_PUB_FILE);
    if !pub_path.exists() {
        write_new(&pub_path, public.as_bytes(), 0o644)?;
    }
    Ok(keys)
}

/// Loads the keys in `dir`.
pub fn load(dir: &Path) -> Result<KeyMaterial, KeyFileError> {
    for name in SECRET_FILES {
        let p = dir.join(name);
        if let Ok(meta) = fs::metadata(&p)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %p.display(), "key file is readable by group or others; chmod 600 it");
        }
    }
    let signing = LedgerSigningKey::from_seed(&*read_hex32(&dir.join(SIGNING_KEY_FILE))?);
    let index_path = dir.join(INDEX_KEY_FILE);
    let index = SubjectIndexKey::from_slice(read_hex32(&index_path)?.as_ref())
        .map_err(|_| KeyFileError::Malformed(index_path))?;
    Ok(KeyMaterial { signing, index })
}

/// Loads the keys in `dir`, or creates them if none exists yet. `true` means created.
pub fn load_or_create(dir: &Path) -> Result<(KeyMaterial, bool), KeyFileError> {
    let present: Vec<bool> = SECRET_FILES.iter().map(|n| dir.join(n).exists()).collect();
    if present.iter().all(|p| !p) {
        return create(dir).map(|k| (k, true));
    }
    if let Some(i) = present.iter().position(|p| !p) {
        return Err(KeyFileError::Incomplete {
            dir: dir.to_owned(),
            missing: dir.join(SECRET_FILES[i]),
        });
    }
    load(dir).map(|k| (k, false))
}

/// Reads a public key file (64 hex digits), as written to `signing.pub`.
pub fn read_public_key(path: &Path) -> Result<PublicKey, KeyFileError> {
    let text = fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            KeyFileError::Missing(path.to_owned())
        } else {
            io_err(path)(e)
        }
    })?;
    let bytes = hex::decode(text.trim()).map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
    PublicKey::from_bytes(&bytes).map_err(|_| KeyFileError::Malformed(path.to_owned()))
}

/// The ledger identity recorded in `dir`, if any.
pub fn read_ledger_id(dir: &Path) -> Result<Option<LedgerId>, KeyFileError> {
    let path = dir.join(LEDGER_ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => LedgerId::from_hex(text.trim())
            .map(Some)
            .map_err(|_| KeyFileError::Malformed(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// Records a fresh ledger identity in `dir` (refusing to replace one).
pub fn create_ledger_id(dir: &Path) -> Result<LedgerId, KeyFileError> {
    let mut id = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
    let id = LedgerId(id);
    write_new(
        &dir.join(LEDGER_ID_FILE),
        format!("{id}\n").as_bytes(),
        0o644,
    )?;
    Ok(id)
}

/// Writes a retired key's public half with the exact range it signed.
pub fn write_retired(
    dir: &Path,
    key: &PublicKey,
    first: u64,
    last: u64,
) -> Result<(), KeyFileError> {
    let retired = dir.join(RETIRED_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&retired)
        .map_err(io_err(&retired))?;
    let line = KeyLine::new(key, Some(first), Some(last));
    let mut text = serde_json::to_string(&line).unwrap_or_default();
    text.push('\n');
    let path = retired.join(format!("{}.json", key.key_id()));
    match write_new(&path, text.as_bytes(), 0o644) {
        Err(KeyFileError::AlreadyExists(_))
            if fs::read_to_string(&path).ok().as_deref() == Some(&text) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Reads a public key file an auditor trusts: 64 hex digits (a key trusted wherever the chain
/// lets it sign), or a JSON key object `{"key_id","algorithm","public_key","first_seq","last_seq"}`
/// as `keys/retired/` holds it — or as a bundle's key line (with `"kind":"key"`) or an entry of
/// `GET /v1/keys` (with `"active"`) gives it — trusted only in that range.
pub fn read_trusted_key(path: &Path) -> Result<(PublicKey, Option<KeyRange>), KeyFileError> {
    let text = fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            KeyFileError::Missing(path.to_owned())
        } else {
            io_err(path)(e)
        }
    })?;
    let text = text.trim();
    if text.starts_with('{') {
        // A bundle's key line carries `"kind":"key"`, a `GET /v1/keys` entry `"active"`: both
        // are accepted as they are; any other extra field is refused.
        let mut object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
        if object.get("kind").is_some_and(|k| k == "key") {
            object.remove("kind");
        }
        if object
            .get("active")
            .is_some_and(serde_json::Value::is_boolean)
        {
            object.remove("active");
        }
        let line: KeyLine = serde_json::from_value(serde_json::Value::Object(object))
            .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
        let (key, range) = line
            .parse()
            .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
        let range = range.ok_or_else(|| KeyFileError::Malformed(path.to_owned()))?;
        return Ok((key, Some(range)));
    }
    let mut bytes = [0u8; 32];
    if !crate::entry::decode_hex_exact(text, &mut bytes) {
        return Err(KeyFileError::Malformed(path.to_owned()));
    }
    let key =
        PublicKey::from_bytes(&bytes).map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
    Ok((key, None))
}

/// Adds a trusted key file's key to `keys`, with its range if it has one.
pub fn trust_key_file(keys: &mut TrustedKeys, path: &Path) -> Result<(), KeyFileError> {
    match read_trusted_key(path)? {
        (key, Some(range)) => keys.insert_ranged(key, range),
        (key, None) => keys.insert(key),
    }
    Ok(())
}

/// Every key the ledger has used, as the keys directory records them: the current key (no range
/// of its own: the chain's rotations bound it) and each retired key with its exact range.
pub fn trusted_keys(dir: &Path) -> Result<TrustedKeys, KeyFileError> {
    let mut keys = TrustedKeys::new();
    let retired = dir.join(RETIRED_DIR);
    if retired.is_dir() {
        let mut paths: Vec<PathBuf> = fs::read_dir(&retired)
            .map_err(io_err(&retired))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        for p in paths {
            trust_key_file(&mut keys, &p)?;
        }
    }
    if dir.join(SIGNING_KEY_FILE).exists() {
        let seed = read_hex32(&dir.join(SIGNING_KEY_FILE))?;
        keys.insert(LedgerSigningKey::from_seed(&seed).public_key());
    } else if dir.join(SIGNING_PUB_FILE).exists() {
        keys.insert(read_public_key(&dir.join(SIGNING_PUB_FILE))?);
    }
    Ok(keys)
}

/// The signing key waiting to be rotated in, if any.
pub fn read_next_signing_key(dir: &Path) -> Result<Option<LedgerSigningKey>, KeyFileError> {
    let path = dir.join(NEXT_SIGNING_KEY_FILE);
    match read_hex32(&path) {
        Ok(seed) => Ok(Some(LedgerSigningKey::from_seed(&seed))),
        Err(KeyFileError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a fresh signing key to rotate in, or returns the one already waiting.
pub fn prepare_next_signing_key(dir: &Path) -> Result<LedgerSigningKey, KeyFileError> {
    if let Some(k) = read_next_signing_key(dir)? {
        return Ok(k);
    }
    let key = LedgerSigningKey::generate();
    write_secret(&dir.join(NEXT_SIGNING_KEY_FILE), &key.seed())?;
    Ok(key)
}

fn replace_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), KeyFileError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// After a rotation is committed: the old key's public half goes to `retired/` with its exact
/// range, the new key becomes `signing.key` (and `signing.pub`), and the old private key is
/// gone from the directory. Safe to repeat after a crash part-way.
pub fn finish_rotation(
    dir: &Path,
    old: &PublicKey,
    old_first_seq: u64,
    rotation_seq: u64,
    new: &LedgerSigningKey,
) -> Result<(), KeyFileError> {
    write_retired(dir, old, old_first_seq, rotation_seq)?;
    let mut text = Zeroizing::new(hex::encode(new.seed().as_ref()));
    text.push('\n');
    replace_atomically(&dir.join(SIGNING_KEY_FILE), text.as_bytes(), 0o600)?;
    let public = format!("{}\n", hex::encode(new.public_key().to_bytes()));
    replace_atomically(&dir.join(SIGNING_PUB_FILE), public.as_bytes(), 0o644)?;
    match fs::remove_file(dir.join(NEXT_SIGNING_KEY_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(&dir.join(NEXT_SIGNING_KEY_FILE))(e))
        }
        _ => Ok(()),
    }
}

/// Whether a secret key file's mode lets anyone but the owner read it.
#[must_use]
pub fn is_private(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode().trailing_zeros() >= 6)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_keys_load_back_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let made = create(dir.path()).unwrap();
        assert!(is_private(&dir.path().join(SIGNING_KEY_FILE)));
        assert!(is_private(&dir.path().join(INDEX_KEY_FILE)));
        let loaded = load(dir.path()).unwrap();
        assert_eq!(made.signing.key_id(), loaded.signing.key_id());
        assert!(matches!(
            create(dir.path()),
            Err(KeyFileError::AlreadyExists(_))
        ));
    }

    #[test]
    fn key_objects_from_v1_keys_bundles_and_retired_are_read_with_their_range() {
        let dir = tempfile::tempdir().unwrap();
        let key = LedgerSigningKey::generate().public_key();
        let line = serde_json::to_value(KeyLine::new(&key, Some(3), Some(9))).unwrap();
        let mut forms = vec![line.clone()];
        let mut bundle = line.clone();
        bundle["kind"] = "key".into();
        forms.push(bundle);
        let mut api = line.clone();
        api["active"] = false.into();
        forms.push(api);
        for (i, form) in forms.iter().enumerate() {
            let p = dir.path().join(format!("k{i}.json"));
            fs::write(&p, form.to_string()).unwrap();
            let (k, range) = read_trusted_key(&p).unwrap();
            assert_eq!(k, key);
            assert_eq!(
                range,
                Some(KeyRange {
                    first: 3,
                    last: Some(9)
                })
            );
        }
        let mut decoy = line;
        decoy["extra"] = 1.into();
        let p = dir.path().join("decoy.json");
        fs::write(&p, decoy.to_string()).unwrap();
        assert!(read_trusted_key(&p).is_err());
    }

    #[test]
    fn a_damaged_or_partial_keys_dir_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path()).unwrap();
        fs::write(dir.path().join(INDEX_KEY_FILE), "not hex").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("index.key") && err.contains("malformed"),
            "{err}"
        );
        fs::remove_file(dir.path().join(INDEX_KEY_FILE)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("incomplete"), "{err}");
    }
}
