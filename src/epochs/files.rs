//! The epoch KEK files: `keys/epochs/<epoch>.kek`, 64 hex digits, mode 0600. Created without
//! ever replacing one (a hard link from a synced temporary file, so two instances sharing the
//! directory agree on a single key), destroyed by overwriting and unlinking.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use zeroize::Zeroizing;

use crate::crypto::Kek;
use crate::keyfiles::KeyFileError;

/// Directory of the epoch KEK files, inside the keys directory.
pub const EPOCHS_DIR: &str = "epochs";
/// A running service starts a new epoch when this file appears in the keys directory
/// (`auditledger rotate-kek`); it holds the epoch the request wants ended.
pub const ROTATE_REQUEST_FILE: &str = "kek.rotate";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where epoch `epoch`'s KEK lives.
#[must_use]
pub fn kek_path(keys_dir: &Path, epoch: u32) -> PathBuf {
    keys_dir.join(EPOCHS_DIR).join(format!("{epoch}.kek"))
}

fn parse_kek(path: &Path) -> Result<Kek, KeyFileError> {
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
    let mut raw = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), raw.as_mut())
        .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
    Kek::from_slice(raw.as_ref()).map_err(|_| KeyFileError::Malformed(path.to_owned()))
}

/// Every epoch KEK file present, by epoch.
pub fn read_all(keys_dir: &Path) -> Result<BTreeMap<u32, Kek>, KeyFileError> {
    let dir = keys_dir.join(EPOCHS_DIR);
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_err(&dir))?.path();
        let Some(epoch) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".kek"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        out.insert(epoch, parse_kek(&path)?);
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), KeyFileError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes `kek` as epoch `epoch`'s KEK unless a file for that epoch exists; returns the KEK
/// the file holds afterwards (the existing one if another process got there first).
pub fn create(keys_dir: &Path, epoch: u32, kek: &Kek) -> Result<Kek, KeyFileError> {
    let dir = keys_dir.join(EPOCHS_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_err(&dir))?;
    let path = kek_path(keys_dir, epoch);
    let mut nonce = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let tmp = dir.join(format!(".{epoch}.kek.{}", hex::encode(nonce)));
    {
        let mut text = Zeroizing::new(hex::encode(kek.expose()));
        text.push('\n');
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    // link(2) never replaces an existing file: whoever links first wins, everyone reads it.
    let linked = fs::hard_link(&tmp, &path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    sync_dir(&dir)?;
    parse_kek(&path)
}

/// Destroys epoch `epoch`'s KEK file: overwrites it with zeros, syncs, unlinks, syncs the
/// directory. Missing already: nothing to do.
pub fn destroy(keys_dir: &Path, epoch: u32) -> Result<(), KeyFileError> {
    let path = kek_path(keys_dir, epoch);
    match fs::OpenOptions::new().write(true).open(&path) {
        Ok(mut f) => {
            let len = usize::try_from(f.metadata().map_err(io_err(&path))?.len()).unwrap_or(0);
            f.write_all(&vec![0u8; len]).map_err(io_err(&path))?;
            f.sync_all().map_err(io_err(&path))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(&path)(e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    sync_dir(&keys_dir.join(EPOCHS_DIR))
}

/// Adopts a ledger's single legacy KEK (`keys/kek.key`, before epochs) as epoch 1, then removes
/// the legacy file. Returns whether there was one.
pub fn adopt_legacy(keys_dir: &Path) -> Result<bool, KeyFileError> {
    let legacy = keys_dir.join(crate::keyfiles::KEK_FILE);
    if !legacy.exists() {
        return Ok(false);
    }
    let kek = parse_kek(&legacy)?;
    let id = kek.id();
    let kept = create(keys_dir, 1, &kek)?;
    if kept.id() != id {
        return Err(KeyFileError::Malformed(kek_path(keys_dir, 1)));
    }
    fs::remove_file(&legacy).map_err(io_err(&legacy))?;
    sync_dir(keys_dir)?;
    Ok(true)
}
