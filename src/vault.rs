//! The key vault: data keys stored wrapped under the KEK, unwrapped on demand and cached in
//! memory in zeroizing buffers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use rand::RngCore;

use crate::crypto::{DataKey, Kek, KeyRef};
use crate::store::{Store, StoreError, VaultRow};

/// Errors of the vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    kek: Kek,
    system_ref: KeyRef,
    system_key: Arc<DataKey>,
    cache: Mutex<Cache>,
}

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
        write!(f, "Vault({:?})", self.kek)
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
    /// Opens the vault: unwraps the system key (creating it on first start). A KEK that does
    /// not open it fails here, before anything is written.
    pub async fn open(store: Arc<dyn Store>, kek: Kek) -> Result<Vault, VaultError> {
        let row = if let Some(row) = store.system_key().await? {
            row
        } else {
            let mut id = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let key_ref = KeyRef::System(id);
            let dek = DataKey::generate();
            let row = VaultRow {
                key_ref,
                wrapped: kek.wrap(&dek, &key_ref),
                kek_id: kek.id().to_hex(),
            };
            store.insert_vault_key(&row, &kek.id()).await?;
            row
        };
        let system_key =
            kek.unwrap(&row.wrapped, &row.key_ref)
                .map_err(|_| VaultError::WrongKek {
                    kek_id: kek.id().to_hex(),
                    wrapped_under: row.kek_id.clone(),
                    what: "system key",
                })?;
        Ok(Vault {
            store,
            kek,
            system_ref: row.key_ref,
            system_key: Arc::new(system_key),
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The system key, which seals events that name no subject.
    #[must_use]
    pub fn system_key(&self) -> (KeyRef, Arc<DataKey>) {
        (self.system_ref, Arc::clone(&self.system_key))
    }

    /// The key-encryption key.
    #[must_use]
    pub fn kek(&self) -> &Kek {
        &self.kek
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
        let key = self
            .kek
            .unwrap(&row.wrapped, key_ref)
            .map_err(|_| VaultError::WrongKek {
                kek_id: self.kek.id().to_hex(),
                wrapped_under: row.kek_id.clone(),
                what: "data key",
            })?;
        let key = Arc::new(key);
        let mut cache = self.lock_cache();
        // The row was read before a concurrent erasure committed: do not resurrect it.
        if cache.destroyed.contains(key_ref) {
            return Ok(None);
        }
        cache.insert(*key_ref, Arc::clone(&key));
        Ok(Some(key))
    }

    /// Remembers a key the writer just created.
    pub fn remember(&self, key_ref: KeyRef, key: Arc<DataKey>) {
        self.lock_cache().insert(key_ref, key);
    }

    /// Marks a key destroyed and drops it from the cache (it is zeroized once the last user
    /// lets go).
    pub fn forget(&self, key_ref: &KeyRef) {
        let mut cache = self.lock_cache();
        cache.keys.remove(key_ref);
        cache.destroyed.insert(*key_ref);
    }

    /// Drops every cached subject key (each is unwrapped again on demand): for when this
    /// process cannot learn of other instances' erasures in time.
    pub fn clear_cached(&self) {
        self.lock_cache().keys.clear();
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
