//! Value types for secret material: zeroized on drop, redacted in Debug, never Display or
//! Serialize. A leaf crate, so the server and the client library share them; the server also
//! locks their pages in RAM by installing its [`PageLocker`].
#![forbid(unsafe_code)]

use secrecy::{ExposeSecret, SecretSlice};
use std::fmt;
use std::sync::OnceLock;
use zeroize::Zeroize;

/// Pins a buffer's pages in RAM while a secret lives in it, and releases them. Page locking
/// needs `unsafe` system calls, so it stays in the server's one hardening module.
#[derive(Clone, Copy)]
pub struct PageLocker {
    pub lock: fn(&[u8]),
    pub unlock: fn(&[u8]),
}

static LOCKER: OnceLock<PageLocker> = OnceLock::new();

/// Installs the page locker once, before secrets are made; false if one was installed already.
pub fn set_page_locker(l: PageLocker) -> bool {
    LOCKER.set(l).is_ok()
}

fn lock(b: &[u8]) {
    if let Some(l) = LOCKER.get() {
        (l.lock)(b)
    }
}

fn unlock(b: &[u8]) {
    if let Some(l) = LOCKER.get() {
        (l.unlock)(b)
    }
}

/// Secret bytes, locked in RAM while they live (where a [`PageLocker`] is installed). Clone shares nothing: each clone
/// is its own locked, zeroizing buffer.
pub struct SecretBytes(SecretSlice<u8>);

impl SecretBytes {
    /// Takes ownership of `bytes`; the vector's buffer (shrunk to fit) becomes the secret's buffer.
    pub fn new(mut bytes: Vec<u8>) -> Self {
        if bytes.capacity() != bytes.len() {
            // Copy into an exact-size buffer and wipe the old one, so no spare capacity keeps a tail.
            let exact = bytes.as_slice().to_vec();
            bytes.zeroize();
            bytes = exact;
        }
        let s = Self(SecretSlice::from(bytes));
        lock(s.expose());
        s
    }

    /// Copies a string a client library handed us, then wipes the original.
    pub fn from_string(mut s: String) -> Self {
        let out = Self::new(s.as_bytes().to_vec());
        s.zeroize();
        out
    }

    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    pub fn len(&self) -> usize {
        self.expose().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Constant-time equality, for comparing tokens and values.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.expose().ct_eq(other).into()
    }
}

impl Clone for SecretBytes {
    fn clone(&self) -> Self {
        Self::new(self.expose().to_vec())
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // The inner buffer zeroizes itself right after this.
        unlock(self.expose());
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {} bytes])", self.len())
    }
}

/// A secret string (tokens, passwords), same guarantees as [`SecretBytes`].
#[derive(Clone)]
pub struct SecretText(secrecy::SecretString);

impl SecretText {
    pub fn new(s: String) -> Self {
        Self(secrecy::SecretString::from(s))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretText([REDACTED; {} bytes])", self.expose().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::new(b"canary-7f3a".to_vec());
        let shown = format!("{s:?} {s:#?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.contains("REDACTED; 11 bytes"));
        let t = SecretText::new("canary-tok".into());
        assert!(!format!("{t:?}").contains("canary"));
    }

    #[test]
    fn ct_eq_compares_values() {
        let s = SecretBytes::new(b"abc".to_vec());
        assert!(s.ct_eq(b"abc"));
        assert!(!s.ct_eq(b"abd"));
        assert!(!s.ct_eq(b"ab"));
    }

    /// Proof by inherent-impl priority: the inherent const exists only when the bound holds.
    #[test]
    fn no_display_no_serialize() {
        trait NotDisplay {
            const DISPLAY: bool = false;
        }
        impl<T: ?Sized> NotDisplay for T {}
        struct Probe<T: ?Sized>(std::marker::PhantomData<T>);
        #[allow(dead_code)]
        impl<T: ?Sized + fmt::Display> Probe<T> {
            const DISPLAY: bool = true;
        }
        trait NotSer {
            const SER: bool = false;
        }
        impl<T: ?Sized> NotSer for T {}
        #[allow(dead_code)]
        impl<T: ?Sized + serde::Serialize> Probe<T> {
            const SER: bool = true;
        }
        const { assert!(!<Probe<SecretBytes>>::DISPLAY) };
        const { assert!(!<Probe<SecretText>>::DISPLAY) };
        const { assert!(!<Probe<SecretBytes>>::SER) };
        const { assert!(!<Probe<SecretText>>::SER) };
        const { assert!(<Probe<String>>::DISPLAY, "the probe must detect Display") };
        const { assert!(<Probe<String>>::SER, "the probe must detect Serialize") };
    }
}
