//! The key vault: data keys stored wrapped under the current KEK epoch's key (crate::epochs),
//! unwrapped on demand and cached in memory in zeroizing buffers; and the sealed links from
//! identifiers' index MACs to subject handles.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rand::RngCore;

use crate::crypto::{DataKey, KeyRef};
use crate::entry::SubjectHandle;
use crate::epochs::{EpochError, EpochKek, Keyring};
use crate::store::{LinkRow, Store, StoreError, VaultRow};

/// Errors of the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The epochs could not be read.
    #[error(transparent)]
    Epochs(#[from] EpochError),
    /// A row is wrapped under a KEK whose epoch was destroyed or whose file this process
    /// cannot read.
    #[error(
        "a key-vault row is wrapped under KEK id {kek_id}, which no living epoch in the keys directory holds"
    )]
    NoSuchKek {
        /// The id the row names.
        kek_id: String,
    },
    /// A wrapped key does not open: the KEK given is not the one the vault was made with, or
    /// the row was tampered with.
    #[error(
        "the key-encryption key (id {kek_id}) does not open the key vault's {what} (wrapped under KEK id {wrapped_under}); is this the right keys directory?"
    )]
    WrongKek {
        /// Id of the KEK we hold.
        kek_id: String,
        /// Id the row says it was wrapped under.
        wrapped_under: String,
        /// Which key.
        what: &'static str,
    },
}

/// Unwrapped data keys, shared by readers and the writer.
pub struct Vault {
    store: Arc<dyn Store>,
    keys_dir: PathBuf,
    keyring: RwLock<Arc<Keyring>>,
    system_ref: KeyRef,
    system_key: Arc<DataKey>,
    cache: Mutex<Cache>,
    /// Counts of keys forgotten and of whole-cache clears: what a cache of opened data (the
    /// subscribers' feed) compares to learn that something it opened may be erased now.
    forgets: AtomicU64,
    clears: AtomicU64,
    /// Woken whenever either count grows.
    forgot: tokio::sync::Notify,
}

/// How much the vault had forgotten at some moment ([`Vault::forgetting`]).
pub use crate::subscription::Forgetting;

/// Most unwrapped subject keys kept in memory; beyond it the cache starts over (each key is
/// zeroized as it is dropped) and keys are unwrapped again on demand.
pub const MAX_CACHED_KEYS: usize = 100_000;

/// Unwrapped keys, and the keys destroyed since start. A destroyed key is refused even if a
/// reader that raced the erasure tries to put it back in the cache.
#[derive(Default)]
struct Cache {
    keys: HashMap<KeyRef, Arc<DataKey>>,
    destroyed: HashSet<KeyRef>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Vault({:?})", self.current_kek())
    }
}

impl Cache {
    /// Caches a key, bounded by [`MAX_CACHED_KEYS`].
    fn insert(&mut self, key_ref: KeyRef, key: Arc<DataKey>) {
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(key_ref, key);
    }
}

impl Vault {
    /// Opens the vault: unwraps the system key (creating it on first start). A keyring that
    /// does not open it fails here, before anything is written.
    pub async fn open(
        store: Arc<dyn Store>,
        keyring: Keyring,
        keys_dir: PathBuf,
    ) -> Result<Vault, VaultError> {
        let current = keyring.current();
        let row = if let Some(row) = store.system_key().await? {
            row
        } else {
            let mut id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let key_ref = KeyRef::System(id);
            let dek = DataKey::generate();
            let row = VaultRow {
                key_ref,
                wrapped: current.kek.wrap(&dek, &key_ref),
                kek_id: current.kek_id.clone(),
            };
            store.insert_vault_key(&row, &current.kek.id()).await?;
            row
        };
        let vault = Vault {
            store,
            keys_dir,
            keyring: RwLock::new(Arc::new(keyring)),
            system_ref: row.key_ref,
            system_key: Arc::new(DataKey::generate()),
            cache: Mutex::new(Cache::default()),
            forgets: AtomicU64::new(0),
            clears: AtomicU64::new(0),
            forgot: tokio::sync::Notify::new(),
        };
        let system_key = vault.unwrap_row(&row, "system key").await?;
        Ok(Vault {
            system_key: Arc::new(system_key),
            ..vault
        })
    }

    async fn unwrap_row(&self, row: &VaultRow, what: &'static str) -> Result<DataKey, VaultError> {
        let kek = self.kek_by_id(&row.kek_id).await?;
        kek.kek
            .unwrap(&row.wrapped, &row.key_ref)
            .map_err(|_| VaultError::WrongKek {
                kek_id: kek.kek_id.clone(),
                wrapped_under: row.kek_id.clone(),
                what,
            })
    }

    /// The current epoch's KEK, as this process last read the epochs.
    #[must_use]
    pub fn current_kek(&self) -> Arc<EpochKek> {
        self.keyring().current()
    }

    /// The keyring as last read.
    #[must_use]
    pub fn keyring(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the epochs and their KEK files (a new epoch started, an old one destroyed —
    /// its KEK leaves this process's memory here).
    pub async fn refresh(&self) -> Result<Arc<Keyring>, VaultError> {
        let fresh = Arc::new(Keyring::load(self.store.as_ref(), &self.keys_dir).await?);
        *self.keyring.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&fresh);
        Ok(fresh)
    }

    /// The KEK with this id; re-reads the epochs once if this process does not hold it (another
    /// instance started an epoch).
    pub async fn kek_by_id(&self, kek_id: &str) -> Result<Arc<EpochKek>, VaultError> {
        if let Some(k) = self.keyring().by_id(kek_id) {
            return Ok(k);
        }
        self.refresh()
            .await?
            .by_id(kek_id)
            .ok_or_else(|| VaultError::NoSuchKek {
                kek_id: kek_id.to_owned(),
            })
    }

    /// The handle a sealed link names.
    pub async fn open_link(&self, link: &LinkRow) -> Result<SubjectHandle, VaultError> {
        let kek = self.kek_by_id(&link.kek_id).await?;
        kek.kek
            .open_link(&link.sealed_handle, &link.index_mac)
            .map_err(|_| VaultError::WrongKek {
                kek_id: kek.kek_id.clone(),
                wrapped_under: link.kek_id.clone(),
                what: "subject link",
            })
    }

    /// The live subject whose identifier has this index MAC, if any.
    pub async fn subject(&self, index_mac: &[u8; 32]) -> Result<Option<SubjectHandle>, VaultError> {
        let Some(link) = self.store.subject_link(index_mac).await? else {
            return Ok(None);
        };
        match self.open_link(&link).await {
            // Re-sealed under a new epoch, and the old one destroyed, since the row was read.
            Err(VaultError::NoSuchKek { .. }) => match self.store.subject_link(index_mac).await? {
                Some(link) => Ok(Some(self.open_link(&link).await?)),
                None => Ok(None),
            },
            other => other.map(Some),
        }
    }

    /// The system key, which seals events that name no subject.
    #[must_use]
    pub fn system_key(&self) -> (KeyRef, Arc<DataKey>) {
        (self.system_ref, Arc::clone(&self.system_key))
    }

    /// The data key for `key_ref`, or `None` if the vault no longer holds it (destroyed).
    pub async fn key(&self, key_ref: &KeyRef) -> Result<Option<Arc<DataKey>>, VaultError> {
        if *key_ref == self.system_ref {
            return Ok(Some(Arc::clone(&self.system_key)));
        }
        {
            let cache = self.lock_cache();
            if cache.destroyed.contains(key_ref) {
                return Ok(None);
            }
            if let Some(k) = cache.keys.get(key_ref) {
                return Ok(Some(Arc::clone(k)));
            }
        }
        let Some(row) = self.store.vault_key(key_ref).await? else {
            return Ok(None);
        };
        let key = match self.unwrap_row(&row, "data key").await {
            // Re-wrapped under a new epoch, and the old one destroyed, since the row was read.
            Err(VaultError::NoSuchKek { .. }) => match self.store.vault_key(key_ref).await? {
                Some(row) => self.unwrap_row(&row, "data key").await?,
                None => return Ok(None),
            },
            other => other?,
        };
        let key = Arc::new(key);
        let mut cache = self.lock_cache();
        // The row was read before a concurrent erasure committed: do not resurrect it.
        if cache.destroyed.contains(key_ref) {
            return Ok(None);
        }
        cache.insert(*key_ref, Arc::clone(&key));
        Ok(Some(key))
    }

    /// Remembers a key the writer created, once its batch has committed. Its subject may have
    /// been erased by another instance (and the key forgotten here) since that commit: then
    /// the key stays forgotten.
    pub fn remember(&self, key_ref: KeyRef, key: Arc<DataKey>) {
        let mut cache = self.lock_cache();
        if !cache.destroyed.contains(&key_ref) {
            cache.insert(key_ref, key);
        }
    }

    /// Marks a key destroyed and drops it from the cache (it is zeroized once the last user
    /// lets go).
    pub fn forget(&self, key_ref: &KeyRef) {
        let mut cache = self.lock_cache();
        cache.keys.remove(key_ref);
        cache.destroyed.insert(*key_ref);
        // Counted under the lock, after the key is marked: whoever reads the count before
        // opening with a key sees either the mark or a changed count.
        self.forgets.fetch_add(1, Ordering::SeqCst);
        drop(cache);
        self.forgot.notify_waiters();
    }

    /// Drops every cached subject key (each is unwrapped again on demand): for when this
    /// process cannot learn of other instances' erasures in time.
    pub fn clear_cached(&self) {
        let mut cache = self.lock_cache();
        cache.keys.clear();
        self.clears.fetch_add(1, Ordering::SeqCst);
        drop(cache);
        self.forgot.notify_waiters();
    }

    /// Resolves once the vault forgets anything after this is called (a cache of opened data
    /// drops what it holds then, not at its next look).
    pub fn forgot(&self) -> tokio::sync::futures::Notified<'_> {
        self.forgot.notified()
    }

    /// How much has been forgotten so far: read it before opening data that is kept for
    /// later, and compare at the moment of using it ([`crate::subscription::at_send`]).
    #[must_use]
    pub fn forgetting(&self) -> Forgetting {
        Forgetting {
            forgets: self.forgets.load(Ordering::SeqCst),
            clears: self.clears.load(Ordering::SeqCst),
        }
    }

    /// Whether this process knows `key_ref` to be destroyed (an erasure it made or learnt of).
    #[must_use]
    pub fn is_destroyed(&self, key_ref: &KeyRef) -> bool {
        self.lock_cache().destroyed.contains(key_ref)
    }

    /// Whether the unwrapped key for `key_ref` is in this process's cache (for tests and
    /// diagnostics: an erased subject's key must leave every instance's cache).
    #[must_use]
    pub fn is_cached(&self, key_ref: &KeyRef) -> bool {
        self.lock_cache().keys.contains_key(key_ref)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding this lock leaves the map itself consistent.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
