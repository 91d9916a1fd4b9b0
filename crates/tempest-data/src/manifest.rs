//! `manifest.csv`, the index of a prepared folder: written by [`prepare`](crate::prepare()),
//! read by [`Dataset::from_manifest`](crate::Dataset::from_manifest) and by the next
//! `prepare` into the same folder. Exactly the columns [`MANIFEST_HEADER`], RFC 4180 quoting
//! (a field with a comma, a quote or a line break is quoted), one row per file.

use std::path::Path;

use crate::files::write_atomically;
use crate::{Error, Result};

/// The manifest's file name inside a prepared folder.
pub const MANIFEST_FILE: &str = "manifest.csv";

/// The columns of `manifest.csv`, in order.
pub const MANIFEST_HEADER: &str = "id,label,split,variant,path,bytes,duration";

/// One row of `manifest.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Item id.
    pub id: String,
    /// Class.
    pub label: String,
    /// Split.
    pub split: String,
    /// The variant, as `mp3:20`.
    pub variant: String,
    /// Output path relative to the output directory, `/`-separated.
    pub path: String,
    /// Output size in bytes.
    pub bytes: u64,
    /// Duration of the input clip in seconds (audio only).
    pub duration: Option<f64>,
}

/// Reads the `manifest.csv` of the prepared folder `dir`. The header must be exactly
/// [`MANIFEST_HEADER`]; a row needs at least the five columns up to `path` and a variant
/// that parses; a `bytes` or `duration` that is missing or empty reads as 0 or none, one that
/// is not a number is an error naming the file and line (a damaged row is not guessed at).
pub fn read(dir: &Path) -> Result<Vec<Row>> {
    let path = dir.join(MANIFEST_FILE);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(&path)
        .map_err(Error::csv(&path))?;
    let mut records = reader.records();
    let header = match records.next() {
        Some(h) => h.map_err(Error::csv(&path))?,
        None => csv::StringRecord::new(),
    };
    if header.iter().ne(MANIFEST_HEADER.split(',')) {
        let found: Vec<&str> = header.iter().collect();
        return Err(Error::dataset(
            &path,
            format!("header {:?}, expected {MANIFEST_HEADER:?}", found.join(",")),
        ));
    }
    let mut rows = Vec::new();
    for record in records {
        let r = record.map_err(Error::csv(&path))?;
        if r.len() < 5 {
            let line = r.position().map_or(0, |p| p.line());
            return Err(Error::dataset(
                &path,
                format!("line {line}: {} fields, expected 7", r.len()),
            ));
        }
        let line = r.position().map_or(0, |p| p.line());
        let bad = |what: String| Error::dataset(&path, format!("line {line}: {what}"));
        let field = |i: usize| r.get(i).unwrap_or_default().to_string();
        let variant = field(3);
        variant
            .parse::<crate::Variant>()
            .map_err(|e| bad(format!("variant {variant:?}: {e}")))?;
        let bytes = match r.get(5).filter(|b| !b.is_empty()) {
            None => 0,
            Some(b) => b
                .parse()
                .map_err(|_| bad(format!("bytes {b:?} is not a whole number")))?,
        };
        let duration = match r.get(6).filter(|d| !d.is_empty()) {
            None => None,
            Some(d) => Some(
                d.parse()
                    .map_err(|_| bad(format!("duration {d:?} is not a number")))?,
            ),
        };
        rows.push(Row {
            id: field(0),
            label: field(1),
            split: field(2),
            variant,
            path: field(4),
            bytes,
            duration,
        });
    }
    Ok(rows)
}

/// Writes `rows` as the `manifest.csv` of `dir`, atomically (a manifest under its name is
/// always whole). Durations are written with six decimals, empty for images. A manifest that
/// already holds exactly these rows is left as it is: processes that open one prepared
/// folder at once (the ranks of a data-parallel run) then never write it, where each
/// rewriting it through the one temporary name could rename another's file away.
pub fn write(dir: &Path, rows: &[Row]) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(64 * (rows.len() + 1)));
    let written = (|| {
        w.write_record(MANIFEST_HEADER.split(','))?;
        for r in rows {
            let bytes = r.bytes.to_string();
            let duration = r.duration.map(|d| format!("{d:.6}")).unwrap_or_default();
            w.write_record([
                r.id.as_str(),
                &r.label,
                &r.split,
                &r.variant,
                &r.path,
                &bytes,
                &duration,
            ])?;
        }
        w.flush()?;
        Ok::<_, csv::Error>(())
    })();
    written.map_err(Error::csv(&path))?;
    let text = w
        .into_inner()
        .map_err(|e| Error::dataset(&path, e.to_string()))?;
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    write_atomically(&path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, label: &str, duration: Option<f64>) -> Row {
        Row {
            id: id.into(),
            label: label.into(),
            split: "train".into(),
            variant: "mp3:20".into(),
            path: format!("mp3-20/train/{id}.mp3"),
            bytes: 1234,
            duration,
        }
    }

    #[test]
    fn rows_are_written_quoted_where_needed_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tempest-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = vec![
            row("a", "dog", Some(1.5)),
            row("b", "a,b", None),
            row("c", "say \"hi\"", Some(0.25)),
        ];
        write(&dir, &rows).unwrap();
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        assert_eq!(
            text,
            "id,label,split,variant,path,bytes,duration\n\
             a,dog,train,mp3:20,mp3-20/train/a.mp3,1234,1.500000\n\
             b,\"a,b\",train,mp3:20,mp3-20/train/b.mp3,1234,\n\
             c,\"say \"\"hi\"\"\",train,mp3:20,mp3-20/train/c.mp3,1234,0.250000\n"
        );
        assert_eq!(read(&dir).unwrap(), rows);
        // Line breaks inside quotes, CRLF line ends and blank lines read as well.
        std::fs::write(
            dir.join(MANIFEST_FILE),
            "id,label,split,variant,path,bytes,duration\r\n\"x\ny\",l,s,mp3:20,p,1,\r\n\r\n",
        )
        .unwrap();
        let back = read(&dir).unwrap();
        assert_eq!((back.len(), back[0].id.as_str()), (1, "x\ny"));
        std::fs::write(dir.join(MANIFEST_FILE), "id,label\na,b\n").unwrap();
        assert!(read(&dir).unwrap_err().to_string().contains("header"));
        std::fs::write(dir.join(MANIFEST_FILE), format!("{MANIFEST_HEADER}\na,b\n")).unwrap();
        assert!(read(&dir).unwrap_err().to_string().contains("line 2"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unchanged_manifest_is_not_written_again() {
        // The temporary file's name taken by a folder: any write fails, so a second write of
        // the same rows must succeed without writing, and one of other rows must fail.
        let dir =
            std::env::temp_dir().join(format!("tempest-manifest-same-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = vec![row("a", "dog", Some(1.5)), row("b", "cat", None)];
        write(&dir, &rows).unwrap();
        std::fs::create_dir_all(dir.join(format!(".{MANIFEST_FILE}.partial"))).unwrap();
        write(&dir, &rows).unwrap();
        assert_eq!(read(&dir).unwrap(), rows);
        assert!(write(&dir, &rows[..1]).is_err(), "other rows are written");
        assert_eq!(
            read(&dir).unwrap(),
            rows,
            "a failed write leaves the old manifest"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
