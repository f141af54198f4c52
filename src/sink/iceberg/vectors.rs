//! Deletion vectors (Iceberg format v3): the rows removed from one data file, as a bitmap of
//! positions in a `deletion-vector-v1` blob of a Puffin file. A v3 table may not take new
//! position-delete files; each of its data files has at most one live vector, which replaces
//! the one before it (and takes in every position that one and any older position-delete file
//! removed).
//!
//! A blob is the vector's length (4 bytes, big-endian), the magic `D1 D3 39 64`, the positions
//! as a 64-bit Roaring bitmap in its portable form (the count of 32-bit bitmaps, then each
//! one's high 32 bits and the bitmap itself, little-endian), and the CRC-32 of magic and bitmap
//! (big-endian). A Puffin file is `PFA1`, the blobs, and a footer: `PFA1`, a JSON payload
//! describing each blob (offset, length, referenced data file, cardinality), the payload's
//! length (4 bytes, little-endian), 4 flag bytes and `PFA1` again.

use std::collections::{BTreeSet, HashMap};

use iceberg::io::FileIO;
use iceberg::spec::{DataContentType, DataFile, DataFileBuilder, DataFileFormat, Struct};
use roaring::RoaringTreemap;

const PUFFIN_MAGIC: [u8; 4] = *b"PFA1";
const VECTOR_MAGIC: [u8; 4] = [0xD1, 0xD3, 0x39, 0x64];
const BLOB_TYPE: &str = "deletion-vector-v1";
/// The reserved field id of a row's position (`_pos`), which a vector's blob is computed on.
const ROW_POSITION_FIELD_ID: i32 = 2_147_483_645;
const REFERENCED_DATA_FILE: &str = "referenced-data-file";
const CARDINALITY: &str = "cardinality";
/// Footer flag byte 0, bit 0: the payload is LZ4-compressed (never written here; refused).
const FOOTER_COMPRESSED: u8 = 1;

/// Where one vector is: its Puffin file's blob at `offset`, `length` bytes, removing rows of
/// `referenced` (what the manifest entry says of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VectorAt {
    pub referenced: String,
    pub offset: u64,
    pub length: u64,
}

impl VectorAt {
    /// Where `file` (a manifest entry) has its vector; `None` when it is not a vector (a
    /// data file, an equality delete, a Parquet position-delete file).
    pub fn of(file: &DataFile) -> Result<Option<VectorAt>, String> {
        if file.content_type() != DataContentType::PositionDeletes
            || file.file_format() != DataFileFormat::Puffin
        {
            return Ok(None);
        }
        let path = file.file_path();
        let missing = |what: &str| format!("{path}: a deletion vector without {what}");
        let referenced = file
            .referenced_data_file()
            .ok_or_else(|| missing("referenced_data_file"))?;
        let offset = file
            .content_offset()
            .ok_or_else(|| missing("content_offset"))?;
        let length = file
            .content_size_in_bytes()
            .ok_or_else(|| missing("content_size_in_bytes"))?;
        Ok(Some(VectorAt {
            referenced,
            offset: u64::try_from(offset).map_err(|_| missing("a valid content_offset"))?,
            length: u64::try_from(length).map_err(|_| missing("a valid content_size_in_bytes"))?,
        }))
    }
}

/// The blob of a vector removing the positions of `bitmap`.
pub fn encode(bitmap: &RoaringTreemap) -> Result<Vec<u8>, String> {
    let mut body = Vec::with_capacity(4 + bitmap.serialized_size());
    body.extend_from_slice(&VECTOR_MAGIC);
    bitmap
        .serialize_into(&mut body)
        .map_err(|e| format!("deletion vector: {e}"))?;
    let length = u32::try_from(body.len())
        .map_err(|_| format!("deletion vector of {} bytes", body.len()))?;
    let mut blob = Vec::with_capacity(body.len() + 8);
    blob.extend_from_slice(&length.to_be_bytes());
    blob.extend_from_slice(&body);
    blob.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    Ok(blob)
}

/// The positions the vector blob `blob` removes; `what` names it in errors.
pub fn decode(blob: &[u8], what: &str) -> Result<BTreeSet<u64>, String> {
    Ok(decode_bitmap(blob, what)?.iter().collect())
}

/// [`decode`], as the bitmap itself.
pub fn decode_bitmap(blob: &[u8], what: &str) -> Result<RoaringTreemap, String> {
    let bad = |why: &str| format!("{what}: not a deletion vector ({why})");
    if blob.len() < 12 {
        return Err(bad("shorter than its framing"));
    }
    let (length, rest) = blob.split_at(4);
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    if length + 8 != blob.len() {
        return Err(bad(&format!(
            "it says {length} bytes and has {}",
            blob.len() - 8
        )));
    }
    let (body, crc) = rest.split_at(length);
    if body[..4] != VECTOR_MAGIC {
        return Err(bad("wrong magic"));
    }
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(bad("its checksum does not match"));
    }
    RoaringTreemap::deserialize_from(&body[4..]).map_err(|e| bad(&e.to_string()))
}

/// The vector at `at` in the Puffin file at `path`: the positions it removes.
pub async fn load(file_io: &FileIO, path: &str, at: &VectorAt) -> Result<BTreeSet<u64>, String> {
    Ok(load_bitmap(file_io, path, at).await?.iter().collect())
}

/// [`load`], as the bitmap itself.
pub async fn load_bitmap(
    file_io: &FileIO,
    path: &str,
    at: &VectorAt,
) -> Result<RoaringTreemap, String> {
    let input = file_io
        .new_input(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let reader = input.reader().await.map_err(|e| format!("{path}: {e}"))?;
    let blob = reader
        .read(at.offset..at.offset + at.length)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    decode_bitmap(&blob, &format!("{path} at {}", at.offset))
}

/// Whether `bytes` are a Puffin file's (else a Parquet file's).
pub fn is_puffin(bytes: &[u8]) -> bool {
    bytes.starts_with(&PUFFIN_MAGIC)
}

/// Every vector of the Puffin file `bytes` (read from `path`), by the data file it removes
/// rows of: for a reader that knows the file but not its blobs (a scan task of the iceberg
/// crate).
pub fn read_all(bytes: &[u8], path: &str) -> Result<HashMap<String, BTreeSet<u64>>, String> {
    let bad = |why: &str| format!("{path}: not a Puffin file ({why})");
    let n = bytes.len();
    if n < 4 + 4 + 12 || bytes[..4] != PUFFIN_MAGIC || bytes[n - 4..] != PUFFIN_MAGIC {
        return Err(bad("no magic at its ends"));
    }
    if bytes[n - 8] & FOOTER_COMPRESSED != 0 {
        return Err(bad(
            "a compressed footer, which no deletion vector file has",
        ));
    }
    let payload_length =
        u32::from_le_bytes([bytes[n - 12], bytes[n - 11], bytes[n - 10], bytes[n - 9]]) as usize;
    let payload_end = n - 12;
    let footer_start = payload_end
        .checked_sub(payload_length + 4)
        .filter(|&s| s >= 4)
        .ok_or_else(|| bad("a footer longer than the file"))?;
    if bytes[footer_start..footer_start + 4] != PUFFIN_MAGIC {
        return Err(bad("no magic before the footer"));
    }
    let footer: serde_json::Value = serde_json::from_slice(&bytes[footer_start + 4..payload_end])
        .map_err(|e| bad(&e.to_string()))?;
    let mut vectors = HashMap::new();
    for blob in footer["blobs"].as_array().into_iter().flatten() {
        if blob["type"] != BLOB_TYPE {
            continue;
        }
        if blob.get("compression-codec").is_some_and(|c| !c.is_null()) {
            return Err(bad("a compressed deletion vector"));
        }
        let (Some(offset), Some(length), Some(referenced)) = (
            blob["offset"].as_u64(),
            blob["length"].as_u64(),
            blob["properties"][REFERENCED_DATA_FILE].as_str(),
        ) else {
            return Err(bad("a deletion vector without offset, length or data file"));
        };
        let (start, end) = (offset as usize, (offset + length) as usize);
        if end > footer_start || start < 4 {
            return Err(bad("a blob outside the file's blobs"));
        }
        let positions = decode(&bytes[start..end], &format!("{path} at {offset}"))?;
        vectors
            .entry(referenced.to_string())
            .or_insert_with(BTreeSet::new)
            .extend(positions);
    }
    Ok(vectors)
}

/// Writes at `path` the Puffin file of one vector per data file of `vectors` (all in
/// `partition` of spec `spec_id`), and returns their manifest entries.
pub async fn write(
    file_io: &FileIO,
    path: &str,
    vectors: &[(String, RoaringTreemap)],
    partition: &Struct,
    spec_id: i32,
) -> Result<Vec<DataFile>, String> {
    let mut bytes = PUFFIN_MAGIC.to_vec();
    let mut placed = Vec::with_capacity(vectors.len());
    let mut described = Vec::with_capacity(vectors.len());
    for (referenced, positions) in vectors {
        let blob = encode(positions)?;
        let offset = bytes.len() as u64;
        bytes.extend_from_slice(&blob);
        described.push(serde_json::json!({
            "type": BLOB_TYPE,
            "fields": [ROW_POSITION_FIELD_ID],
            "snapshot-id": -1,
            "sequence-number": -1,
            "offset": offset,
            "length": blob.len(),
            "properties": {
                REFERENCED_DATA_FILE: referenced,
                CARDINALITY: positions.len().to_string(),
            },
        }));
        placed.push((referenced, positions.len(), offset, blob.len() as u64));
    }
    let payload = serde_json::to_vec(&serde_json::json!({
        "blobs": described,
        "properties": { "created-by": concat!("lakewriter ", env!("CARGO_PKG_VERSION")) },
    }))
    .map_err(|e| format!("{path}: {e}"))?;
    bytes.extend_from_slice(&PUFFIN_MAGIC);
    bytes.extend_from_slice(&payload);
    bytes.extend_from_slice(
        &u32::try_from(payload.len())
            .map_err(|_| format!("{path}: a footer of {} bytes", payload.len()))?
            .to_le_bytes(),
    );
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&PUFFIN_MAGIC);
    let size = bytes.len() as u64;
    super::positions::write_bytes(file_io, path, bytes).await?;
    placed
        .into_iter()
        .map(|(referenced, cardinality, offset, length)| {
            DataFileBuilder::default()
                .content(DataContentType::PositionDeletes)
                .file_path(path.to_string())
                .file_format(DataFileFormat::Puffin)
                .partition(partition.clone())
                .partition_spec_id(spec_id)
                .record_count(cardinality)
                .file_size_in_bytes(size)
                .referenced_data_file(Some(referenced.clone()))
                .content_offset(Some(offset as i64))
                .content_size_in_bytes(Some(length as i64))
                .build()
                .map_err(|e| format!("{path}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(values: &[u64]) -> BTreeSet<u64> {
        values.iter().copied().collect()
    }

    fn bitmap(values: &BTreeSet<u64>) -> RoaringTreemap {
        values.iter().copied().collect()
    }

    #[test]
    fn a_vector_decodes_to_its_positions_and_refuses_a_damaged_blob() {
        // positions in three 32-bit buckets, one of them a run
        let mut removed = positions(&[0, 7, 1 << 33, (1 << 33) + 5]);
        removed.extend(1000..5000);
        let blob = encode(&bitmap(&removed)).expect("encode");
        assert_eq!(decode(&blob, "t").expect("decode"), removed);
        // the length is of magic and bitmap, big-endian
        assert_eq!(
            u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize,
            blob.len() - 8
        );
        assert_eq!(blob[4..8], VECTOR_MAGIC);
        let mut flipped = blob.clone();
        flipped[12] ^= 1;
        assert!(
            decode(&flipped, "t")
                .expect_err("a flipped bit")
                .contains("checksum")
        );
        assert!(decode(&blob[..blob.len() - 1], "t").is_err());
        assert!(decode(&[0; 12], "t").is_err());
        assert_eq!(
            decode(&encode(&RoaringTreemap::new()).expect("empty"), "t").expect("e"),
            BTreeSet::new()
        );
    }

    #[tokio::test]
    async fn a_puffin_file_holds_a_vector_per_data_file_at_the_offsets_its_entries_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = FileIO::new_with_fs();
        let path = format!("{}/d.puffin", dir.path().display());
        let vectors = vec![
            ("file:///a.parquet".to_string(), positions(&[1, 2, 3])),
            ("file:///b.parquet".to_string(), positions(&[0, 1 << 40])),
        ];
        let bitmaps: Vec<(String, RoaringTreemap)> = vectors
            .iter()
            .map(|(file, removed)| (file.clone(), bitmap(removed)))
            .collect();
        let entries = write(&io, &path, &bitmaps, &Struct::empty(), 0)
            .await
            .expect("write");
        assert_eq!(entries.len(), 2);
        for (entry, (referenced, removed)) in entries.iter().zip(&vectors) {
            let at = VectorAt::of(entry).expect("a vector").expect("some");
            assert_eq!(&at.referenced, referenced);
            assert_eq!(entry.record_count(), removed.len() as u64);
            assert_eq!(&load(&io, &path, &at).await.expect("load"), removed);
        }
        let bytes = std::fs::read(&path).expect("read");
        let all = read_all(&bytes, &path).expect("read all");
        assert_eq!(all.len(), 2);
        assert_eq!(all["file:///b.parquet"], vectors[1].1);
        let size = std::fs::metadata(&path).expect("size").len();
        assert_eq!(entries[0].file_size_in_bytes(), size);
    }
}
