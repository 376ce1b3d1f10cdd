//! `tcp-echo`: the L4 upstream. Echoes every byte back on the same connection.

use bench::args::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "tcp-echo [--listen 127.0.0.1:30890] [--threads 1]

Echoes every byte it reads. Pin it with taskset; --threads N > 1 uses a multi-thread runtime.";

/// Read buffer per connection.
const BUFFER_BYTES: usize = 64 * 1024;

fn main() {
    let args = Args::parse(USAGE, &[]);
    let listen = args.str_or("listen", "127.0.0.1:30890");
    let threads: usize = args.get("threads", 1);
    let rt = bench::runner::tokio_runtime(threads);
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("tcp-echo: bind {listen}: {e}");
                std::process::exit(1);
            }
        };
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; BUFFER_BYTES];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
