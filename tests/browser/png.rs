//! A small PNG reader for the tests: 8-bit RGB or RGBA, not interlaced (what Chromium's
//! screenshots and PIL write), with the inflate it needs. No crate: the decoder is the
//! test's own check of what came back.

/// A decoded image: its size and RGBA pixels, row by row.
pub struct Image {
    pub width: usize,
    pub height: usize,
    rgba: Vec<[u8; 4]>,
}

impl Image {
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 4] {
        self.rgba[y * self.width + x]
    }
}

/// Decode a PNG, or say why not.
pub fn decode(data: &[u8]) -> Result<Image, String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !data.starts_with(SIGNATURE) {
        return Err("not a PNG signature".into());
    }
    let mut at = SIGNATURE.len();
    let (mut width, mut height, mut channels) = (0usize, 0usize, 0usize);
    let mut compressed = Vec::new();
    while at + 8 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let kind = &data[at + 4..at + 8];
        let body = data
            .get(at + 8..at + 8 + len)
            .ok_or("a chunk runs past the end")?;
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(body[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(body[4..8].try_into().unwrap()) as usize;
                let (depth, color, interlace) = (body[8], body[9], body[12]);
                channels = match (depth, color, interlace) {
                    (8, 2, 0) => 3,
                    (8, 6, 0) => 4,
                    other => return Err(format!("unsupported depth/colour/interlace {other:?}")),
                };
            }
            b"IDAT" => compressed.extend_from_slice(body),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    if channels == 0 {
        return Err("no IHDR".into());
    }
    // zlib: a two-byte header, the deflate stream, a checksum.
    let raw = inflate(compressed.get(2..).ok_or("no zlib header")?)?;
    let stride = width * channels;
    if raw.len() < height * (stride + 1) {
        return Err(format!(
            "{} bytes of pixels for {width}x{height}",
            raw.len()
        ));
    }
    let mut rows: Vec<Vec<u8>> = Vec::with_capacity(height);
    for y in 0..height {
        let line = &raw[y * (stride + 1)..(y + 1) * (stride + 1)];
        let (filter, line) = (line[0], &line[1..]);
        let prior = y.checked_sub(1).map(|p| rows[p].clone());
        let up = |i: usize| prior.as_ref().map_or(0, |p| p[i]);
        let mut out = vec![0u8; stride];
        for i in 0..stride {
            let left = if i >= channels { out[i - channels] } else { 0 };
            let corner = if i >= channels { up(i - channels) } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => left,
                2 => up(i),
                3 => ((u16::from(left) + u16::from(up(i))) / 2) as u8,
                4 => paeth(left, up(i), corner),
                f => return Err(format!("filter {f}")),
            };
            out[i] = line[i].wrapping_add(predicted);
        }
        rows.push(out);
    }
    let rgba = rows
        .iter()
        .flat_map(|row| {
            row.chunks(channels).map(|p| match channels {
                3 => [p[0], p[1], p[2], 255],
                _ => [p[0], p[1], p[2], p[3]],
            })
        })
        .collect();
    Ok(Image {
        width,
        height,
        rgba,
    })
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Bits of a deflate stream, least significant first.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
    buffer: u32,
    count: u32,
}

impl Bits<'_> {
    fn take(&mut self, n: u32) -> Result<u32, String> {
        while self.count < n {
            let byte = *self
                .data
                .get(self.at)
                .ok_or("the deflate stream ends early")?;
            self.at += 1;
            self.buffer |= u32::from(byte) << self.count;
            self.count += 8;
        }
        let value = self.buffer & ((1u32 << n) - 1);
        self.buffer >>= n;
        self.count -= n;
        Ok(value)
    }
}

/// A canonical Huffman code: how many codes of each length, and the symbols in order.
struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut counts = [0u16; 16];
        for &l in lengths {
            counts[l as usize] += 1;
        }
        counts[0] = 0;
        let mut offsets = [0u16; 16];
        for len in 1..15 {
            offsets[len + 1] = offsets[len] + counts[len];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (symbol, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[offsets[l as usize] as usize] = symbol as u16;
                offsets[l as usize] += 1;
            }
        }
        Huffman { counts, symbols }
    }

    fn decode(&self, bits: &mut Bits) -> Result<u16, String> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.take(1)? as i32;
            let count = i32::from(self.counts[len]);
            if code - count < first {
                return Ok(self.symbols[(index + (code - first)) as usize]);
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        Err("a bad Huffman code".into())
    }
}

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Inflate a raw deflate stream (RFC 1951).
pub fn inflate(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut bits = Bits {
        data,
        at: 0,
        buffer: 0,
        count: 0,
    };
    let mut out = Vec::new();
    loop {
        let last = bits.take(1)? == 1;
        match bits.take(2)? {
            0 => {
                // Stored: byte-aligned LEN, NLEN, then LEN bytes.
                bits.buffer = 0;
                bits.count = 0;
                let at = bits.at;
                let header = data.get(at..at + 4).ok_or("a stored block ends early")?;
                let len = usize::from(u16::from_le_bytes([header[0], header[1]]));
                let body = data
                    .get(at + 4..at + 4 + len)
                    .ok_or("a stored block ends early")?;
                out.extend_from_slice(body);
                bits.at = at + 4 + len;
            }
            1 => {
                let mut lengths = [0u8; 288];
                lengths[..144].fill(8);
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                lengths[280..].fill(8);
                let codes = Huffman::new(&lengths);
                let distances = Huffman::new(&[5u8; 30]);
                block(&mut bits, &mut out, &codes, &distances)?;
            }
            2 => {
                let literals = bits.take(5)? as usize + 257;
                let distances = bits.take(5)? as usize + 1;
                let code_lengths = bits.take(4)? as usize + 4;
                const ORDER: [usize; 19] = [
                    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                ];
                let mut lengths = [0u8; 19];
                for &i in &ORDER[..code_lengths] {
                    lengths[i] = bits.take(3)? as u8;
                }
                let lencode = Huffman::new(&lengths);
                let mut all = Vec::with_capacity(literals + distances);
                while all.len() < literals + distances {
                    let symbol = lencode.decode(&mut bits)?;
                    let (value, repeat) = match symbol {
                        0..=15 => (symbol as u8, 1),
                        16 => (
                            *all.last().ok_or("a repeat with nothing before")?,
                            3 + bits.take(2)?,
                        ),
                        17 => (0, 3 + bits.take(3)?),
                        _ => (0, 11 + bits.take(7)?),
                    };
                    all.extend(std::iter::repeat_n(value, repeat as usize));
                }
                let codes = Huffman::new(&all[..literals]);
                let distance_codes = Huffman::new(&all[literals..literals + distances]);
                block(&mut bits, &mut out, &codes, &distance_codes)?;
            }
            _ => return Err("block type 3".into()),
        }
        if last {
            return Ok(out);
        }
    }
}

/// One compressed block's symbols, into `out`.
fn block(
    bits: &mut Bits,
    out: &mut Vec<u8>,
    codes: &Huffman,
    distances: &Huffman,
) -> Result<(), String> {
    loop {
        let symbol = codes.decode(bits)?;
        match symbol {
            0..=255 => out.push(symbol as u8),
            256 => return Ok(()),
            _ => {
                let i = usize::from(symbol - 257);
                let len = usize::from(*LENGTH_BASE.get(i).ok_or("a bad length code")?)
                    + bits.take(u32::from(LENGTH_EXTRA[i]))? as usize;
                let d = usize::from(distances.decode(bits)?);
                let distance = usize::from(*DIST_BASE.get(d).ok_or("a bad distance code")?)
                    + bits.take(u32::from(DIST_EXTRA[d]))? as usize;
                let start = out
                    .len()
                    .checked_sub(distance)
                    .ok_or("a distance before the start")?;
                for k in 0..len {
                    out.push(out[start + k]);
                }
            }
        }
    }
}
