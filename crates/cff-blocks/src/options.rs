//! Options and resource limits shared by every reader.

/// Resource limits. A hostile file that asks for more gets [`Error::Limit`](crate::Error::Limit)
/// instead of an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest input file, in bytes (default 1 GiB).
    pub max_file_bytes: u64,
    /// Most blocks one file may yield (default 16 Mi).
    pub max_blocks: u64,
    /// Largest single block, in bytes (default 1 MiB). An Ogg packet that spans pages is
    /// refused above this before it is assembled.
    pub max_block_bytes: u64,
    /// Most pixels one image may declare (default 256 Mi, a 16384×16384 image).
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 1 << 30,
            max_blocks: 1 << 24,
            max_block_bytes: 1 << 20,
            max_pixels: 1 << 28,
        }
    }
}

impl Limits {
    /// No limits beyond what the machine has. Use on trusted input only.
    pub fn none() -> Self {
        Limits {
            max_file_bytes: u64::MAX,
            max_blocks: u64::MAX,
            max_block_bytes: u64::MAX,
            max_pixels: u64::MAX,
        }
    }

    /// Sets [`Limits::max_file_bytes`].
    pub fn with_max_file_bytes(mut self, n: u64) -> Self {
        self.max_file_bytes = n;
        self
    }

    /// Sets [`Limits::max_blocks`].
    pub fn with_max_blocks(mut self, n: u64) -> Self {
        self.max_blocks = n;
        self
    }

    /// Sets [`Limits::max_block_bytes`].
    pub fn with_max_block_bytes(mut self, n: u64) -> Self {
        self.max_block_bytes = n;
        self
    }

    /// Sets [`Limits::max_pixels`].
    pub fn with_max_pixels(mut self, n: u64) -> Self {
        self.max_pixels = n;
        self
    }
}

/// How readers behave. Build with `Options::default()` and the `with_*` methods.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Options {
    /// Resource limits.
    pub limits: Limits,
    /// Verify checksums where the format has them (the Ogg page CRC-32). Default: on.
    pub verify_crc: bool,
    /// Ogg: read the logical stream with this serial number instead of the first Opus stream.
    pub ogg_serial: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            verify_crc: true,
            ogg_serial: None,
        }
    }
}

impl Options {
    /// Sets the resource limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Turns checksum verification on or off.
    pub fn with_verify_crc(mut self, verify: bool) -> Self {
        self.verify_crc = verify;
        self
    }

    /// Chooses the Ogg logical stream by serial number.
    pub fn with_ogg_serial(mut self, serial: Option<u32>) -> Self {
        self.ogg_serial = serial;
        self
    }
}
