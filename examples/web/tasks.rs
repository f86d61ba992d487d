//! The web example's task, linked into both modes: `serve` calls it, `worker` runs it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What `build_report` returns: serialized into the stored result, read back typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub title: String,
    pub pages: u32,
    pub words: u64,
}

/// What `build_report` reports after each page, through `ivy::progress`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub page: u32,
    pub of: u32,
}

/// How long one page takes: a stand-in for real work (queries, rendering), long enough to
/// watch the progress arrive.
const PAGE_TIME: Duration = Duration::from_millis(200);

/// Builds a report page by page, reporting progress after each. An empty title fails the
/// call (at once: no retry can fix it).
#[ivy::task(name = "examples.web.build_report", queue = "web", timeout = "5m")]
pub async fn build_report(title: String, pages: u32) -> Result<Report, ivy::Permanent> {
    if title.trim().is_empty() {
        return Err(ivy::Permanent::new("a report needs a title"));
    }
    let mut words = 0;
    for page in 1..=pages {
        tokio::time::sleep(PAGE_TIME).await;
        words += 250 + u64::from(page % 7) * 40;
        // A report that cannot be delivered is no reason to fail the call.
        ivy::progress(&Progress { page, of: pages }).await.ok();
    }
    Ok(Report {
        title,
        pages,
        words,
    })
}
