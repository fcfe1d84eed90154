//! Reading a restore's chunks straight from the object store: the controller grants a job
//! presigned GETs of the packs and the key of each chunk it may read (`LocateChunks`);
//! the agent reads byte ranges itself and opens each chunk's frame. The controller stays
//! the authority (the grant, the pace, revocation) and leaves the data path.
//!
//! Chunks are read in runs: consecutive chunks of the request (tree order) that sit close
//! together in one pack make one range GET (a first backup's chunks are in tree order in
//! their packs, so runs are long). Runs are read a few at a time and handed on in order.

use futures::StreamExt;
use lifeboat_core::ChunkId;
use lifeboat_core::seal::BlobKey;
use lifeboat_proto::pb;

/// A run ends where the next chunk is further than this past the previous one's end
/// (reading a small gap beats another request) ...
const MAX_GAP: u64 = 256 << 10;
/// ... or when it reaches this many bytes (the memory a run holds).
const MAX_RUN: u64 = 8 << 20;
/// Runs read at once.
const RUNS_IN_FLIGHT: usize = 4;
/// Tries of one range GET, paused 200 ms, 400 ms ... up to [`MAX_BACKOFF`] apart (each
/// ±50%: `lifeboat_core::backoff`): about 16 s of a store that does not answer, as the controller's own S3 client
/// waits, before the restore names the chunks it could not read.
const ATTEMPTS: u32 = 8;
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// One range GET of pack `url`, bytes `start..end`, holding `chunks` (or, with `url`
/// `usize::MAX`, one chunk the store cannot produce).
struct Run {
    url: usize,
    start: u64,
    end: u64,
    chunks: Vec<pb::ChunkLocation>,
}

/// Cuts located chunks (in the request's order) into runs.
fn runs(chunks: Vec<pb::ChunkLocation>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for c in chunks {
        if !c.unavailable.is_empty() {
            // Kept in order as a run of its own with nothing to read.
            runs.push(Run {
                url: usize::MAX,
                start: 0,
                end: 0,
                chunks: vec![c],
            });
            continue;
        }
        let (start, end) = (c.offset, c.offset + u64::from(c.length));
        match runs.last_mut() {
            Some(r)
                if r.url == c.url as usize
                    && start >= r.end
                    && start - r.end <= MAX_GAP
                    && end - r.start <= MAX_RUN =>
            {
                r.end = end;
                r.chunks.push(c);
            }
            _ => runs.push(Run {
                url: c.url as usize,
                start,
                end,
                chunks: vec![c],
            }),
        }
    }
    runs
}

/// Reads one run and opens its chunks; a chunk that cannot be read or opened is marked
/// unavailable (only the files that use it fail).
fn read_run(http: &ureq::Agent, grant: &Grant, run: Run) -> Vec<pb::ChunkBlob> {
    let bytes = match run.url {
        usize::MAX => Err(String::new()),
        n => match grant.urls.get(n) {
            Some(url) => get_range(http, url, run.start, run.end, grant.expires_ms),
            None => Err("the controller named no such URL".into()),
        },
    };
    run.chunks
        .into_iter()
        .map(|c| {
            let blob = match &bytes {
                _ if !c.unavailable.is_empty() => Err(c.unavailable.clone()),
                Err(why) => Err(why.clone()),
                Ok(bytes) => open(&c, run.start, bytes),
            };
            match blob {
                Ok(blob) => pb::ChunkBlob {
                    id: c.id,
                    blob: blob.into(),
                    unavailable: String::new(),
                },
                Err(why) => pb::ChunkBlob {
                    id: c.id,
                    blob: Default::default(),
                    unavailable: why,
                },
            }
        })
        .collect()
}

/// The codec blob of chunk `c`, cut from a run's bytes and opened with its key.
fn open(c: &pb::ChunkLocation, run_start: u64, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let at = (c.offset - run_start) as usize;
    let frame = bytes
        .get(at..at + c.length as usize)
        .ok_or("the object store returned less than the run")?;
    if c.key.is_empty() {
        return Ok(frame.to_vec()); // a plaintext store: the agent's own check follows
    }
    let id = ChunkId::from_slice(&c.id).map_err(|e| e.to_string())?;
    BlobKey::from_slice(&c.key)
        .and_then(|k| k.open_frame(&id, frame))
        .map_err(|e| format!("chunk {id}: {e}"))
}

/// The presigned URLs of one `LocateChunks` answer, and until when (by the controller's
/// clock) they are valid.
struct Grant {
    urls: Vec<String>,
    expires_ms: i64,
}

/// `bytes=start-(end-1)` of a presigned URL, retried on transport errors and 5xx.
fn get_range(
    http: &ureq::Agent,
    url: &str,
    start: u64,
    end: u64,
    expires_ms: i64,
) -> Result<Vec<u8>, String> {
    let range = format!("bytes={start}-{}", end - 1);
    let mut last = String::new();
    let mut backoff =
        lifeboat_core::backoff::Backoff::new(std::time::Duration::from_millis(200), MAX_BACKOFF);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tracing::warn!(attempt, error = %last, "reading from the object store: retrying");
            std::thread::sleep(backoff.pause());
        }
        let resp = match http.get(url).header("range", &range).call() {
            Ok(r) => r,
            Err(e) => {
                last = format!("the object store did not answer: {e}");
                continue;
            }
        };
        let status = resp.status().as_u16();
        if status >= 500 || status == 429 {
            last = format!("the object store answered {status}");
            continue;
        }
        if !(200..300).contains(&status) {
            let answer = lifeboat_proto::http::ErrorAnswer::read(resp);
            return Err(refused(&answer, expires_ms, crate::now_ms()));
        }
        match resp
            .into_body()
            .with_config()
            .limit(MAX_RUN + (1 << 20))
            .read_to_vec()
        {
            Ok(body) if body.len() as u64 == end - start => return Ok(body),
            Ok(body) => last = format!("{} bytes came back, {} asked for", body.len(), end - start),
            Err(e) => last = format!("the read broke off: {e}"),
        }
    }
    Err(last)
}

/// Why the store refused a presigned read, in its words, with what each clock involved
/// reads: the store judges the URL's validity by its own clock, the controller set it by
/// its clock, so a grant refused long before it should expire means two clocks disagree.
fn refused(answer: &lifeboat_proto::http::ErrorAnswer, expires_ms: i64, now_ms: i64) -> String {
    let lifeboat_proto::http::ErrorAnswer {
        status,
        date,
        code,
        message,
    } = answer;
    let date = date.as_deref().unwrap_or("no Date header");
    let at = |ms: i64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    format!(
        "the object store refused the read ({status} {code}: {message}) at {date} by its clock; the grant runs until {} by the controller's clock, and this machine's reads {}: a grant that ran out or was revoked, or else the controller's clock and the store's disagree (set both right: NTP)",
        at(expires_ms),
        at(now_ms),
    )
}

/// Where the chunks of one request are, under the job's grant: presigned URLs of their
/// packs, and each chunk's place and key, in the request's order.
pub(super) struct Located(pb::ChunkLocations);

/// Asks the controller where `ids` are. A failed call's status is returned as it came, for
/// the caller to judge (a break of the way to the controller is worth waiting out); an
/// answer about other chunks is refused as an internal error.
pub(super) async fn locate(
    client: &mut crate::client::Client,
    job_id: &str,
    ids: &[ChunkId],
) -> Result<Located, tonic::Status> {
    let located = client
        .locate_chunks(pb::GetChunksRequest {
            job_id: job_id.to_string(),
            ids: ids.iter().map(|i| i.as_bytes().to_vec()).collect(),
        })
        .await?
        .into_inner();
    if located.chunks.len() != ids.len()
        || located
            .chunks
            .iter()
            .zip(ids)
            .any(|(c, id)| c.id != id.as_bytes())
    {
        return Err(tonic::Status::internal(
            "the controller located other chunks than asked for",
        ));
    }
    Ok(Located(located))
}

/// Reads located chunks from the object store, sending their blobs (in order, a run per
/// message) to `out`. Returns the bytes read, or why the restore must stop.
pub(super) async fn read(
    http: &ureq::Agent,
    located: Located,
    out: &tokio::sync::mpsc::Sender<Result<Vec<pb::ChunkBlob>, String>>,
) -> Result<u64, String> {
    let Located(located) = located;
    let grant = std::sync::Arc::new(Grant {
        urls: located.urls,
        expires_ms: located.expires_unix_ms,
    });
    let runs = runs(located.chunks);
    let mut read = futures::stream::iter(runs)
        .map(|run| {
            let (http, grant) = (http.clone(), grant.clone());
            tokio::task::spawn_blocking(move || read_run(&http, &grant, run))
        })
        .buffered(RUNS_IN_FLIGHT);
    let mut bytes = 0u64;
    while let Some(joined) = read.next().await {
        let blobs = joined.map_err(|e| format!("reading from the object store: {e}"))?;
        bytes += blobs.iter().map(|b| b.blob.len() as u64).sum::<u64>();
        if out.send(Ok(blobs)).await.is_err() {
            break; // the restore ended
        }
    }
    Ok(bytes)
}

/// Why a read straight from the store failed: the controller's answer to the locate (as
/// it came, for the caller to judge), or the store's.
pub(super) enum ReadError {
    Controller(tonic::Status),
    Store(String),
}

/// Reads a few chunks (a tree's) straight from the store and returns their blobs in
/// order; any chunk the store cannot produce fails the read.
pub(super) async fn get(
    client: &mut crate::client::Client,
    http: &ureq::Agent,
    job_id: &str,
    ids: &[ChunkId],
) -> Result<Vec<Vec<u8>>, ReadError> {
    // Room for every run at once: `read` never waits on this reader.
    let (tx, mut rx) = tokio::sync::mpsc::channel(ids.len().max(1));
    let located = locate(client, job_id, ids)
        .await
        .map_err(ReadError::Controller)?;
    read(http, located, &tx).await.map_err(ReadError::Store)?;
    drop(tx);
    let mut out = Vec::with_capacity(ids.len());
    while let Some(blobs) = rx.recv().await {
        for b in blobs.map_err(ReadError::Store)? {
            if !b.unavailable.is_empty() {
                return Err(ReadError::Store(b.unavailable));
            }
            out.push(Vec::from(b.blob));
        }
    }
    match out.len() == ids.len() {
        true => Ok(out),
        false => Err(ReadError::Store(format!(
            "{} of {} chunks came back",
            out.len(),
            ids.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_read_says_what_the_store_said_and_what_each_clock_reads() {
        let answer = lifeboat_proto::http::ErrorAnswer {
            status: 403,
            date: Some("Mon, 07 Dec 2026 03:23:48 GMT".into()),
            code: "AccessDenied".into(),
            message: "Request has expired".into(),
        };
        let said = refused(
            &answer,
            1_796_612_028_000, // 2026-12-07T02:53:48Z
            1_796_613_828_000, // 2026-12-07T03:23:48Z
        );
        assert_eq!(
            said,
            "the object store refused the read (403 AccessDenied: Request has expired) at Mon, 07 Dec 2026 03:23:48 GMT by its clock; the grant runs until 2026-12-07T02:53:48Z by the controller's clock, and this machine's reads 2026-12-07T03:23:48Z: a grant that ran out or was revoked, or else the controller's clock and the store's disagree (set both right: NTP)"
        );
    }

    fn at(url: u32, offset: u64, length: u32) -> pb::ChunkLocation {
        pb::ChunkLocation {
            url,
            offset,
            length,
            ..Default::default()
        }
    }

    #[test]
    fn runs_join_close_chunks_of_one_pack_in_order() {
        let r = runs(vec![
            at(0, 8, 100),
            at(0, 108, 100),
            at(0, 208 + MAX_GAP, 10),     // a small gap: same run
            at(1, 8, 10),                 // another pack
            at(0, 300, 10),               // back before the run's end: a new run
            at(0, 400 + 2 * MAX_GAP, 10), // too far: a new run
            at(0, 500 + 2 * MAX_GAP, MAX_RUN as u32), // too big to join
        ]);
        let shape: Vec<(usize, u64, u64, usize)> = r
            .iter()
            .map(|r| (r.url, r.start, r.end, r.chunks.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (0, 8, 218 + MAX_GAP, 3),
                (1, 8, 18, 1),
                (0, 300, 310, 1),
                (0, 400 + 2 * MAX_GAP, 410 + 2 * MAX_GAP, 1),
                (0, 500 + 2 * MAX_GAP, 500 + 2 * MAX_GAP + MAX_RUN, 1),
            ]
        );
    }
}
