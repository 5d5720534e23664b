//! A minimal ISO 9660 writer for cloud-init NoCloud seed media: one root directory holding a
//! few small files, with a Joliet tree so that Linux (and cloud-init) see the files under
//! their real lower-case names (`user-data`, `meta-data`, `network-config`).
//!
//! Only the bare-metal provider calls it. The image is laid out as ECMA-119 describes: 16 empty
//! system-area sectors, the primary volume descriptor, the Joliet supplementary volume
//! descriptor (UCS-2 level 3), the terminator, little- and big-endian path tables for both
//! trees, one root directory sector per tree, then the file extents (shared by both trees).
//! No Rock Ridge, no El Torito, no subdirectories: a seed needs none of them. The output is
//! deterministic for given inputs and timestamp.

/// Size of a logical sector (and block) in bytes.
pub const SECTOR: usize = 2048;
/// Most files one image can hold (both root directories must fit in one sector each).
pub const MAX_FILES: usize = 16;
/// Largest single file accepted (seed documents are small; this bounds memory).
pub const MAX_FILE_SIZE: usize = 16 * 1024 * 1024;

/// Why an image cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IsoError {
    /// The volume label is empty, too long or has characters outside `[A-Za-z0-9_-]`.
    #[error("volume label {label:?} must be 1 to 16 letters, digits, '_' or '-'")]
    Label { label: String },
    /// A file name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("file name {name:?} must be 1 to 64 letters, digits, '.', '_' or '-'")]
    FileName { name: String },
    /// Two names are equal, or map to the same 8.3 ISO 9660 name.
    #[error("file names {first:?} and {second:?} collide in the ISO 9660 8.3 name {short}")]
    Collision {
        first: String,
        second: String,
        short: String,
    },
    /// Too many files, or a file too large.
    #[error("{0}")]
    TooLarge(String),
}

/// One file of the image's root directory.
#[derive(Debug, Clone, Copy)]
pub struct IsoFile<'a> {
    /// Name as Linux shows it through Joliet, e.g. `user-data`.
    pub name: &'a str,
    /// Contents.
    pub data: &'a [u8],
}

/// Build an ISO 9660 + Joliet image labelled `label` with `files` in its root directory.
/// `unix_time` stamps every date field (pass a fixed value for reproducible bytes).
pub fn build(label: &str, files: &[IsoFile<'_>], unix_time: i64) -> Result<Vec<u8>, IsoError> {
    if label.is_empty()
        || label.len() > 16
        || !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(IsoError::Label {
            label: label.to_string(),
        });
    }
    if files.len() > MAX_FILES {
        return Err(IsoError::TooLarge(format!(
            "{} files given; a seed image holds at most {MAX_FILES}",
            files.len()
        )));
    }
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        if f.name.is_empty()
            || f.name.len() > 64
            || !f
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(IsoError::FileName {
                name: f.name.to_string(),
            });
        }
        if f.data.len() > MAX_FILE_SIZE {
            return Err(IsoError::TooLarge(format!(
                "{} is {} bytes; the limit is {MAX_FILE_SIZE}",
                f.name,
                f.data.len()
            )));
        }
        entries.push(Entry {
            joliet: f.name.to_string(),
            short: short_name(f.name),
            data: f.data,
            lba: 0,
        });
    }
    for (i, a) in entries.iter().enumerate() {
        for b in &entries[i + 1..] {
            if a.short == b.short {
                return Err(IsoError::Collision {
                    first: a.joliet.clone(),
                    second: b.joliet.clone(),
                    short: a.short.clone(),
                });
            }
        }
    }

    // Fixed layout: descriptors at 16..=18, path tables at 19..=22, root directories at 23
    // and 24, file extents from 25 on (an empty file still gets its own extent number).
    const PVD: usize = 16;
    const SVD: usize = 17;
    const TERM: usize = 18;
    const PT_L: u32 = 19;
    const PT_M: u32 = 20;
    const JPT_L: u32 = 21;
    const JPT_M: u32 = 22;
    const ROOT: u32 = 23;
    const JROOT: u32 = 24;
    let mut next = 25u32;
    for e in &mut entries {
        e.lba = next;
        next += sectors(e.data.len()).max(1);
    }
    let total = next;
    let stamp = Stamp::from_unix(unix_time);

    let root_dir = directory(&entries, ROOT, false, &stamp)?;
    let joliet_dir = directory(&entries, JROOT, true, &stamp)?;

    let mut img = vec![0u8; total as usize * SECTOR];
    let mut put = |sector: usize, bytes: &[u8]| {
        let at = sector * SECTOR;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(
        PVD,
        &volume_descriptor(false, label, total, (PT_L, PT_M), ROOT, &stamp),
    );
    put(
        SVD,
        &volume_descriptor(true, label, total, (JPT_L, JPT_M), JROOT, &stamp),
    );
    let mut term = [0u8; 7];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(TERM, &term);
    put(PT_L as usize, &path_table(ROOT, false));
    put(PT_M as usize, &path_table(ROOT, true));
    put(JPT_L as usize, &path_table(JROOT, false));
    put(JPT_M as usize, &path_table(JROOT, true));
    put(ROOT as usize, &root_dir);
    put(JROOT as usize, &joliet_dir);
    for e in &entries {
        put(e.lba as usize, e.data);
    }
    Ok(img)
}

struct Entry<'a> {
    joliet: String,
    short: String,
    data: &'a [u8],
    lba: u32,
}

fn sectors(len: usize) -> u32 {
    len.div_ceil(SECTOR) as u32
}

/// The ISO 9660 level 1 name: `NAME.EXT;1` in d-characters (A-Z, 0-9, `_`), 8.3.
fn short_name(name: &str) -> String {
    let map = |s: &str, n: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .take(n)
            .collect()
    };
    let (base, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i + 1..]),
        _ => (name, ""),
    };
    format!("{}.{};1", map(base, 8), map(ext, 3))
}

/// Date and time in the two ECMA-119 forms.
struct Stamp {
    /// 7-byte form of directory records.
    record: [u8; 7],
    /// 17-byte form of volume descriptors.
    descriptor: [u8; 17],
}

impl Stamp {
    fn from_unix(t: i64) -> Stamp {
        let dt = time::OffsetDateTime::from_unix_timestamp(t)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        // Directory records count years from 1900 in one byte.
        let year = dt.year().clamp(1900, 2155);
        let record = [
            (year - 1900) as u8,
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            0,
        ];
        let text = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            year.min(9999),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        );
        let mut descriptor = [0u8; 17];
        descriptor[..16].copy_from_slice(&text.as_bytes()[..16]);
        Stamp { record, descriptor }
    }
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn ucs2(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(|u| u.to_be_bytes()).collect()
}

/// One directory record.
fn record(id: &[u8], lba: u32, len: u32, dir: bool, stamp: &Stamp) -> Vec<u8> {
    let pad = usize::from(id.len() % 2 == 0);
    let size = 33 + id.len() + pad;
    let mut r = vec![0u8; size];
    r[0] = size as u8;
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(len));
    r[18..25].copy_from_slice(&stamp.record);
    r[25] = if dir { 0x02 } else { 0x00 };
    r[28..32].copy_from_slice(&both16(1));
    r[32] = id.len() as u8;
    r[33..33 + id.len()].copy_from_slice(id);
    r
}

/// The root directory of one tree, one sector: `.`, `..`, then the files sorted by identifier.
fn directory(
    entries: &[Entry<'_>],
    lba: u32,
    joliet: bool,
    stamp: &Stamp,
) -> Result<Vec<u8>, IsoError> {
    let mut ids: Vec<(Vec<u8>, &Entry<'_>)> = entries
        .iter()
        .map(|e| {
            let id = if joliet {
                ucs2(&e.joliet)
            } else {
                e.short.as_bytes().to_vec()
            };
            (id, e)
        })
        .collect();
    ids.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = record(&[0], lba, SECTOR as u32, true, stamp);
    out.extend(record(&[1], lba, SECTOR as u32, true, stamp));
    for (id, e) in ids {
        out.extend(record(&id, e.lba, e.data.len() as u32, false, stamp));
    }
    if out.len() > SECTOR {
        return Err(IsoError::TooLarge(
            "the file names do not fit in one directory sector; use fewer or shorter names".into(),
        ));
    }
    Ok(out)
}

/// A path table holding only the root directory.
fn path_table(root: u32, big_endian: bool) -> [u8; 10] {
    let mut t = [0u8; 10];
    t[0] = 1;
    if big_endian {
        t[2..6].copy_from_slice(&root.to_be_bytes());
        t[6..8].copy_from_slice(&1u16.to_be_bytes());
    } else {
        t[2..6].copy_from_slice(&root.to_le_bytes());
        t[6..8].copy_from_slice(&1u16.to_le_bytes());
    }
    t
}

/// The primary (or, with `joliet`, the Joliet supplementary) volume descriptor.
fn volume_descriptor(
    joliet: bool,
    label: &str,
    total: u32,
    (pt_l, pt_m): (u32, u32),
    root: u32,
    stamp: &Stamp,
) -> Vec<u8> {
    let mut d = vec![0u8; SECTOR];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    // Text fields: a-/d-characters padded with spaces, or UCS-2 padded with UCS-2 spaces.
    let text = |d: &mut [u8], at: usize, len: usize, s: &str| {
        let bytes = if joliet {
            ucs2(s)
        } else {
            s.as_bytes().to_vec()
        };
        let field = &mut d[at..at + len];
        for (i, b) in field.iter_mut().enumerate() {
            *b = if joliet && i % 2 == 0 { 0 } else { b' ' };
        }
        let n = bytes.len().min(len);
        field[..n].copy_from_slice(&bytes[..n]);
    };
    text(&mut d, 8, 32, "LINUX");
    text(&mut d, 40, 32, label);
    d[80..88].copy_from_slice(&both32(total));
    if joliet {
        // Escape sequence for UCS-2 level 3.
        d[88..91].copy_from_slice(b"%/E");
    }
    d[120..124].copy_from_slice(&both16(1));
    d[124..128].copy_from_slice(&both16(1));
    d[128..132].copy_from_slice(&both16(SECTOR as u16));
    d[132..140].copy_from_slice(&both32(10));
    d[140..144].copy_from_slice(&pt_l.to_le_bytes());
    d[148..152].copy_from_slice(&pt_m.to_be_bytes());
    d[156..190].copy_from_slice(&record(&[0], root, SECTOR as u32, true, stamp));
    text(&mut d, 190, 128, "");
    text(&mut d, 318, 128, "");
    text(&mut d, 446, 128, "");
    text(&mut d, 574, 128, "PALISADE");
    text(&mut d, 702, 37, "");
    text(&mut d, 739, 37, "");
    text(&mut d, 776, 37, "");
    d[813..830].copy_from_slice(&stamp.descriptor);
    d[830..847].copy_from_slice(&stamp.descriptor);
    // Expiration and effective dates: "not specified" is sixteen '0' digits and a zero offset.
    d[847..863].copy_from_slice(b"0000000000000000");
    d[864..880].copy_from_slice(b"0000000000000000");
    d[881] = 1;
    d
}

#[cfg(test)]
pub(crate) mod read {
    //! A small reader used by the tests to check what the writer produced.

    use super::SECTOR;

    /// What a tree of the image holds.
    #[derive(Debug)]
    pub struct Tree {
        pub label: String,
        pub files: Vec<(String, Vec<u8>)>,
    }

    fn le32(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Read the primary (`joliet == false`) or Joliet tree.
    pub fn tree(img: &[u8], joliet: bool) -> Tree {
        let want = if joliet { 2 } else { 1 };
        let mut sector = 16;
        let vd = loop {
            let d = &img[sector * SECTOR..(sector + 1) * SECTOR];
            assert_eq!(&d[1..6], b"CD001", "descriptor magic at sector {sector}");
            assert_ne!(d[0], 255, "no descriptor of type {want}");
            if d[0] == want {
                break d;
            }
            sector += 1;
        };
        let decode = |b: &[u8]| -> String {
            if joliet {
                let u: Vec<u16> = b
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
                String::from_utf16(&u).expect("ucs2")
            } else {
                String::from_utf8(b.to_vec()).expect("ascii")
            }
        };
        let label = decode(&vd[40..72]).trim_end().to_string();
        assert_eq!(
            le32(&vd[80..84]) as usize * SECTOR,
            img.len(),
            "volume space size"
        );
        let root = &vd[156..190];
        let (lba, len) = (le32(&root[2..6]) as usize, le32(&root[10..14]) as usize);
        let dir = &img[lba * SECTOR..lba * SECTOR + len];
        let mut files = Vec::new();
        let mut at = 0;
        while at < dir.len() && dir[at] != 0 {
            let r = &dir[at..at + dir[at] as usize];
            let id = &r[33..33 + r[32] as usize];
            if id != [0] && id != [1] {
                let (flba, flen) = (le32(&r[2..6]) as usize, le32(&r[10..14]) as usize);
                files.push((
                    decode(id),
                    img[flba * SECTOR..flba * SECTOR + flen].to_vec(),
                ));
            }
            at += r.len();
        }
        Tree { label, files }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Vec<u8> {
        build(
            "cidata",
            &[
                IsoFile {
                    name: "user-data",
                    data: b"#cloud-config\nhostname: a\n",
                },
                IsoFile {
                    name: "meta-data",
                    data: b"instance-id: a\n",
                },
                IsoFile {
                    name: "network-config",
                    data: &[b'x'; 5000],
                },
            ],
            1_700_000_000,
        )
        .expect("build")
    }

    #[test]
    fn joliet_tree_holds_the_files_under_their_names() {
        let img = seed();
        assert_eq!(img.len() % SECTOR, 0);
        let t = read::tree(&img, true);
        assert_eq!(t.label, "cidata");
        let names: Vec<&str> = t.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["meta-data", "network-config", "user-data"]);
        assert_eq!(t.files[2].1, b"#cloud-config\nhostname: a\n");
        assert_eq!(t.files[1].1.len(), 5000);
    }

    #[test]
    fn primary_tree_uses_8_3_names_for_the_same_extents() {
        let img = seed();
        let t = read::tree(&img, false);
        assert_eq!(t.label, "cidata");
        let names: Vec<&str> = t.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["META_DAT.;1", "NETWORK_.;1", "USER_DAT.;1"]);
        assert_eq!(t.files[0].1, b"instance-id: a\n");
    }

    #[test]
    fn output_is_reproducible() {
        assert_eq!(seed(), seed());
    }

    #[test]
    fn empty_files_and_empty_images_are_valid() {
        let img = build("x", &[], 0).expect("empty");
        assert!(read::tree(&img, true).files.is_empty());
        let img = build(
            "x",
            &[IsoFile {
                name: "e",
                data: b"",
            }],
            0,
        )
        .expect("one empty file");
        assert_eq!(read::tree(&img, true).files, [("e".to_string(), vec![])]);
    }

    #[test]
    fn rejects_bad_labels_names_and_collisions() {
        assert!(matches!(build("", &[], 0), Err(IsoError::Label { .. })));
        assert!(matches!(build("a b", &[], 0), Err(IsoError::Label { .. })));
        let bad = IsoFile {
            name: "../x",
            data: b"",
        };
        assert!(matches!(
            build("l", &[bad], 0),
            Err(IsoError::FileName { .. })
        ));
        let a = IsoFile {
            name: "user-data-1",
            data: b"",
        };
        let b = IsoFile {
            name: "user-data-2",
            data: b"",
        };
        assert!(matches!(
            build("l", &[a, b], 0),
            Err(IsoError::Collision { .. })
        ));
        let many: Vec<IsoFile<'_>> = (0..MAX_FILES + 1)
            .map(|_| IsoFile {
                name: "f",
                data: b"",
            })
            .collect();
        assert!(matches!(build("l", &many, 0), Err(IsoError::TooLarge(_))));
    }

    #[test]
    fn short_names_follow_8_3() {
        assert_eq!(short_name("user-data"), "USER_DAT.;1");
        assert_eq!(short_name("a.tar.gz"), "A_TAR.GZ;1");
        assert_eq!(short_name(".hidden"), "_HIDDEN.;1");
    }
}
