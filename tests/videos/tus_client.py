"""Uploads a file to Waymark with tuspy, the tus project's Python client, the way a
flaky client would: a couple of chunks, then a PATCH cut off mid-body, then a chunk
with a wrong Upload-Checksum, then a fresh uploader that resumes from HEAD's offset.

usage: tus_client.py BASE_URL API_KEY FILE CHUNK_SIZE FILETYPE
Prints one JSON object describing what happened.
"""

import base64
import hashlib
import http.client
import json
import os
import sys
import urllib.parse

from tusclient import client

base, key, path, chunk_size, filetype = sys.argv[1:6]
chunk_size = int(chunk_size)
headers = {"Authorization": f"Bearer {key}"}
tus = client.TusClient(base + "/v1/uploads", headers=headers)
size = os.path.getsize(path)
metadata = {"filename": os.path.basename(path), "filetype": filetype}

first = tus.uploader(path, chunk_size=chunk_size, metadata=metadata, upload_checksum=True)
first.upload_chunk()
first.upload_chunk()
offset_before = first.offset
url = first.url

with open(path, "rb") as f:
    f.seek(offset_before)
    chunk = f.read(chunk_size)

target = urllib.parse.urlsplit(url)


def patch(body, declared_length, checksum=None, cut=False):
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    conn.putrequest("PATCH", target.path)
    conn.putheader("Authorization", headers["Authorization"])
    conn.putheader("Tus-Resumable", "1.0.0")
    conn.putheader("Content-Type", "application/offset+octet-stream")
    conn.putheader("Upload-Offset", str(offset_before))
    conn.putheader("Content-Length", str(declared_length))
    if checksum:
        conn.putheader("Upload-Checksum", checksum)
    conn.endheaders()
    conn.send(body)
    if cut:
        # The connection drops mid-chunk, as a client losing its network would.
        conn.sock.close()
        return None
    response = conn.getresponse()
    out = (response.status, response.getheader("Upload-Offset"), response.read().decode())
    conn.close()
    return out


patch(chunk[: len(chunk) // 2], len(chunk), cut=True)
wrong = base64.b64encode(hashlib.sha1(b"not this chunk").digest()).decode()
checksum_status, _, checksum_detail = patch(chunk, len(chunk), checksum="sha1 " + wrong)

# A new uploader, as after a restart: it asks HEAD where to resume.
resumed = tus.uploader(path, url=url, chunk_size=chunk_size, upload_checksum=True)
offset_after = resumed.offset
resumed.upload()

print(json.dumps({
    "url": url,
    "size": size,
    "offset_before_interruption": offset_before,
    "offset_after_interruption": offset_after,
    "checksum_status": checksum_status,
    "checksum_detail": checksum_detail,
    "final_offset": resumed.offset,
}))
