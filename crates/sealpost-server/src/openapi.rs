//! The OpenAPI 3.1 description of the API, served at `/openapi.json`.

/// The document.
pub const DOCUMENT: &str = r##"{
  "openapi": "3.1.0",
  "info": {
    "title": "Sealpost delivery service",
    "version": "1",
    "description": "Stores and forwards MLS ciphertext. JSON bodies carry binary fields as standard base64. Authenticated endpoints take `Authorization: Bearer <token>` from /v1/auth/token. Errors are {\"code\":..., \"message\":...}."
  },
  "components": {
    "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
    "schemas": {
      "Error": { "type": "object", "required": ["code", "message"], "properties": {
        "code": { "type": "string", "enum": ["bad_request","unauthorized","forbidden","not_found","conflict","epoch_conflict","too_large","rate_limited","no_key_package","unavailable","internal"] },
        "message": { "type": "string" } } },
      "Username": { "type": "string", "pattern": "^[a-z][a-z0-9_]{2,31}$" },
      "Hex16": { "type": "string", "pattern": "^[0-9a-f]{32}$" },
      "Base64": { "type": "string", "contentEncoding": "base64" },
      "Posted": { "type": "object", "required": ["seq","sent_at"], "properties": { "seq": {"type":"integer"}, "sent_at": {"type":"integer"} } },
      "UploadStatus": { "type": "object", "required": ["id","length","offset","finished"], "properties": {
        "id": {"$ref":"#/components/schemas/Hex16"}, "length": {"type":"integer","minimum":1}, "offset": {"type":"integer","minimum":0}, "finished": {"type":"boolean"} } },
      "Cursor": { "type": "array", "prefixItems": [ {"$ref":"#/components/schemas/Hex16"}, {"type":"integer","minimum":0} ], "minItems": 2, "maxItems": 2 }
    },
    "responses": {
      "Error": { "description": "An error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
    }
  },
  "paths": {
    "/healthz": { "get": { "summary": "Liveness", "responses": { "200": { "description": "ok" } } } },
    "/readyz": { "get": { "summary": "Readiness: not shutting down; the storage, the key directory and (on several nodes) NATS answer within 2 s",
      "responses": { "200": { "description": "ready", "content": { "application/json": { "schema": { "type": "object", "required": ["storage","directory_epoch","nats"],
        "properties": { "storage": {"const":"ok"}, "directory_epoch": {"type":"integer","minimum":0}, "nats": {"enum":["ok","not used"]} } } } } },
        "503": { "$ref": "#/components/responses/Error" } } } },
    "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "text format" } } } },
    "/v1/accounts": { "post": { "summary": "Register an account and its first device",
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
        "required": ["username","account_key","device_id","device_key","device_certificate","key_packages","last_resort_key_package"],
        "properties": { "username": {"$ref":"#/components/schemas/Username"}, "account_key": {"$ref":"#/components/schemas/Base64"},
          "device_id": {"$ref":"#/components/schemas/Hex16"}, "device_key": {"$ref":"#/components/schemas/Base64"},
          "device_certificate": {"$ref":"#/components/schemas/Base64"},
          "key_packages": {"type":"array","maxItems":200,"items":{"$ref":"#/components/schemas/Base64"}},
          "last_resort_key_package": {"$ref":"#/components/schemas/Base64"} } } } } },
      "responses": { "201": { "description": "created" }, "400": {"$ref":"#/components/responses/Error"}, "409": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/auth/challenge": { "post": { "summary": "Get a challenge to sign",
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["device_id"], "properties": { "device_id": {"$ref":"#/components/schemas/Hex16"} } } } } },
      "responses": { "200": { "description": "challenge", "content": { "application/json": { "schema": { "type": "object", "properties": { "challenge": {"$ref":"#/components/schemas/Base64"}, "expires_at": {"type":"integer"} } } } } }, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/auth/token": { "post": { "summary": "Exchange a signed challenge for a token",
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["device_id","challenge","signature"],
        "properties": { "device_id": {"$ref":"#/components/schemas/Hex16"}, "challenge": {"$ref":"#/components/schemas/Base64"}, "signature": {"$ref":"#/components/schemas/Base64"} } } } } },
      "responses": { "200": { "description": "token", "content": { "application/json": { "schema": { "type": "object", "properties": { "token": {"type":"string"}, "expires_at": {"type":"integer"} } } } } }, "401": {"$ref":"#/components/responses/Error"} } } },
    "/v1/users/{username}": { "get": { "summary": "An account's key and devices", "security": [{"bearer":[]}],
      "parameters": [ { "name": "username", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Username"} } ],
      "responses": { "200": { "description": "user" }, "404": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/users/{username}/key-packages": { "post": { "summary": "Claim one key package per device of a user (rate-limited)", "security": [{"bearer":[]}],
      "parameters": [ { "name": "username", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Username"} },
        { "name": "ciphersuite", "in": "query", "required": true, "description": "the MLS ciphersuite code point", "schema": {"type":"integer","minimum":0,"maximum":65535} } ],
      "responses": { "200": { "description": "claimed" }, "400": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/key-packages": {
      "get": { "summary": "How many single-use key packages are left for this device", "security": [{"bearer":[]}],
        "parameters": [ { "name": "ciphersuite", "in": "query", "required": true, "description": "the MLS ciphersuite code point", "schema": {"type":"integer","minimum":0,"maximum":65535} } ],
        "responses": { "200": { "description": "stock" }, "400": {"$ref":"#/components/responses/Error"} } },
      "post": { "summary": "Upload key packages", "security": [{"bearer":[]}],
        "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["key_packages"], "properties": { "key_packages": {"type":"array","maxItems":200,"items":{"$ref":"#/components/schemas/Base64"}} } } } } },
        "responses": { "200": { "description": "stock" }, "400": {"$ref":"#/components/responses/Error"} } } },
    "/v1/groups": { "post": { "summary": "Register a new group from its epoch-0 GroupInfo (with ratchet tree)", "security": [{"bearer":[]}],
      "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary", "description": "a TLS-encoded MLSMessage (RFC 9420)" } } } },
      "responses": { "201": { "description": "created" }, "400": {"$ref":"#/components/responses/Error"}, "409": {"$ref":"#/components/responses/Error"} } } },
    "/v1/groups/{group}/messages": { "post": { "summary": "Post an application message (PrivateMessage) or a leave proposal", "description": "Idempotent for a retry: the same application message posted again by the device that posted it last (a retry whose answer was lost) is not stored again, and is answered with the sequence number and time of the first post.", "security": [{"bearer":[]}],
      "parameters": [ { "name": "group", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} } ],
      "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary", "description": "a TLS-encoded MLSMessage (RFC 9420)" } } } },
      "responses": { "200": { "description": "appended", "content": { "application/json": { "schema": {"$ref":"#/components/schemas/Posted"} } } }, "403": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/groups/{group}/commits": { "post": { "summary": "Post a commit (and its Welcome); one commit per epoch wins", "security": [{"bearer":[]}],
      "parameters": [ { "name": "group", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} } ],
      "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary", "description": "TLS-encoded struct { opaque commit<V>; opaque welcome<V>; }" } } } },
      "responses": { "200": { "description": "appended", "content": { "application/json": { "schema": {"$ref":"#/components/schemas/Posted"} } } }, "409": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/groups/{group}/expiry": { "put": { "summary": "Keep the group's messages and files at most this long, delivered or not (its members' disappearing-messages timer); 0 for the retention time only", "security": [{"bearer":[]}],
      "parameters": [ { "name": "group", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} } ],
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["seconds"], "additionalProperties": false, "properties": { "seconds": {"type":"integer","minimum":0,"maximum":31536000} } } } } },
      "responses": { "204": { "description": "set" }, "400": {"$ref":"#/components/responses/Error"}, "401": {"$ref":"#/components/responses/Error"}, "403": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/groups/{group}/blobs": { "post": { "summary": "Start uploading an encrypted file for a group's members (resumable, after the IETF resumable-uploads draft)", "description": "The body may carry the first bytes (or all). Answers 201 with Location: /v1/uploads/{id}, Upload-Offset and Upload-Complete. The file counts against the account's quota until every other member device has fetched it.", "security": [{"bearer":[]}],
      "parameters": [ { "name": "group", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} },
        { "name": "Upload-Length", "in": "header", "required": true, "schema": {"type":"integer","minimum":1} },
        { "name": "Upload-Complete", "in": "header", "required": false, "schema": {"type":"string","enum":["?0","?1"]} } ],
      "requestBody": { "required": false, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
      "responses": { "201": { "description": "started", "content": { "application/json": { "schema": {"$ref":"#/components/schemas/UploadStatus"} } } }, "400": {"$ref":"#/components/responses/Error"}, "401": {"$ref":"#/components/responses/Error"}, "403": {"$ref":"#/components/responses/Error"}, "413": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/uploads/{upload}": {
      "head": { "summary": "Where an upload stands (Upload-Offset, Upload-Complete); the uploading device only", "security": [{"bearer":[]}],
        "parameters": [ { "name": "upload", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} } ],
        "responses": { "204": { "description": "its state, in the headers" }, "401": { "description": "not signed in" }, "404": { "description": "no such upload" } } },
      "patch": { "summary": "Continue an upload from Upload-Offset", "security": [{"bearer":[]}],
        "parameters": [ { "name": "upload", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} },
          { "name": "Upload-Offset", "in": "header", "required": true, "schema": {"type":"integer","minimum":0} },
          { "name": "Upload-Complete", "in": "header", "required": false, "schema": {"type":"string","enum":["?0","?1"]} } ],
        "requestBody": { "required": true, "content": { "application/partial-upload": { "schema": { "type": "string", "format": "binary" } }, "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
        "responses": { "200": { "description": "stored", "content": { "application/json": { "schema": {"$ref":"#/components/schemas/UploadStatus"} } } }, "400": {"$ref":"#/components/responses/Error"}, "401": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"}, "409": {"$ref":"#/components/responses/Error"}, "413": {"$ref":"#/components/responses/Error"} } },
      "delete": { "summary": "Cancel an upload, or delete a file one sent", "security": [{"bearer":[]}],
        "parameters": [ { "name": "upload", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} } ],
        "responses": { "204": { "description": "deleted" }, "401": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"} } } },
    "/v1/blobs/{blob}": { "get": { "summary": "Fetch a finished encrypted file; current member devices of its group only", "security": [{"bearer":[]}],
      "parameters": [ { "name": "blob", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} },
        { "name": "Range", "in": "header", "required": false, "schema": {"type":"string","pattern":"^bytes=[0-9]+-$"} } ],
      "responses": { "200": { "description": "the file", "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } }, "206": { "description": "the file from the range's start" }, "400": {"$ref":"#/components/responses/Error"}, "401": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"} } } },
    "/v1/blobs/{blob}/received": { "post": { "summary": "This device has the file; the last recipient's deletes it from the server", "security": [{"bearer":[]}],
      "parameters": [ { "name": "blob", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} } ],
      "responses": { "204": { "description": "recorded" }, "400": {"$ref":"#/components/responses/Error"}, "401": {"$ref":"#/components/responses/Error"} } } },
    "/v1/sync": { "post": { "summary": "Fetch deliveries after the given cursors", "security": [{"bearer":[]}],
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "properties": {
        "inbox_after": {"type":["integer","null"]}, "groups": {"type":"array","items":{"$ref":"#/components/schemas/Cursor"}}, "limit": {"type":["integer","null"],"maximum":1000} } } } } },
      "responses": { "200": { "description": "TLS-encoded SyncBatch", "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } } } } },
    "/v1/ack": { "post": { "summary": "Acknowledge what the device has committed locally", "security": [{"bearer":[]}],
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "properties": {
        "inbox": {"type":["integer","null"]}, "groups": {"type":"array","items":{"$ref":"#/components/schemas/Cursor"}} } } } } },
      "responses": { "204": { "description": "recorded" } } } },
    "/v1/ws": { "get": { "summary": "WebSocket: a text frame 'subscribed', then one binary TLS-encoded Delivery per frame", "security": [{"bearer":[]}],
      "responses": { "101": { "description": "switching protocols" }, "429": {"$ref":"#/components/responses/Error"}, "503": {"$ref":"#/components/responses/Error"} } } },
    "/v1/links": { "post": { "summary": "A new device asks to join an account (it waits for a device of the account to approve)",
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
        "required": ["link_id","username","device_id","device_key","hpke_key","key_packages","tag"],
        "properties": { "link_id": {"type":"string","minLength":20,"maxLength":20}, "username": {"$ref":"#/components/schemas/Username"},
          "device_id": {"$ref":"#/components/schemas/Hex16"}, "device_key": {"$ref":"#/components/schemas/Base64"},
          "hpke_key": {"$ref":"#/components/schemas/Base64"},
          "key_packages": {"type":"array","maxItems":200,"items":{"$ref":"#/components/schemas/Base64"}},
          "tag": {"$ref":"#/components/schemas/Base64"} } } } } },
      "responses": { "201": { "description": "waiting" }, "400": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"}, "409": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/links/{link}": { "get": { "summary": "A device of the account reads a waiting link request", "security": [{"bearer":[]}],
      "parameters": [ { "name": "link", "in": "path", "required": true, "schema": {"type":"string"} } ],
      "responses": { "200": { "description": "the request" }, "404": {"$ref":"#/components/responses/Error"} } } },
    "/v1/links/{link}/approve": { "post": { "summary": "A device of the account approves the new device", "security": [{"bearer":[]}],
      "parameters": [ { "name": "link", "in": "path", "required": true, "schema": {"type":"string"} } ],
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object",
        "required": ["certificate","kem_output","ciphertext","tag"],
        "properties": { "certificate": {"$ref":"#/components/schemas/Base64"}, "kem_output": {"$ref":"#/components/schemas/Base64"},
          "ciphertext": {"$ref":"#/components/schemas/Base64"}, "tag": {"$ref":"#/components/schemas/Base64"} } } } } },
      "responses": { "200": { "description": "approved" }, "400": {"$ref":"#/components/responses/Error"}, "403": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"} } } },
    "/v1/links/{link}/approval": { "get": { "summary": "The new device fetches its approval", "security": [{"bearer":[]}],
      "parameters": [ { "name": "link", "in": "path", "required": true, "schema": {"type":"string"} } ],
      "responses": { "200": { "description": "the approval" }, "403": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"} } } },
    "/v1/devices/{device}": { "delete": { "summary": "Remove another device of the account (never the calling one)", "security": [{"bearer":[]}],
      "parameters": [ { "name": "device", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Hex16"} } ],
      "responses": { "204": { "description": "removed" }, "400": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"} } } },
    "/v1/limits": { "get": { "summary": "What this server accepts (clients check a message's size before sending it)",
      "responses": { "200": { "description": "limits", "content": { "application/json": { "schema": { "type": "object", "required": ["max_body_bytes","max_file_bytes","max_handshake_bytes","max_group_size"], "properties": { "max_body_bytes": {"type":"integer","minimum":0}, "max_file_bytes": {"type":"integer","minimum":0}, "max_handshake_bytes": {"type":"integer","minimum":0}, "max_group_size": {"type":"integer","minimum":0} } } } } } } } },
    "/v1/directory/keys": { "get": { "summary": "The directory's public keys (VRF and root signing key)",
      "responses": { "200": { "description": "keys" } } } },
    "/v1/directory/root": { "get": { "summary": "The latest signed directory root",
      "responses": { "200": { "description": "signed root" } } } },
    "/v1/directory/roots/{epoch}": { "get": { "summary": "The signed directory root of an epoch",
      "parameters": [ { "name": "epoch", "in": "path", "required": true, "schema": {"type":"integer","minimum":0} } ],
      "responses": { "200": { "description": "signed root" }, "400": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"} } } },
    "/v1/directory/lookup/{username}": { "get": { "summary": "A user's directory entry with its lookup proof (rate-limited)", "security": [{"bearer":[]}],
      "parameters": [ { "name": "username", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Username"} } ],
      "responses": { "200": { "description": "entry and proof" }, "404": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/directory/lookups": { "post": { "summary": "Several users' lookup proofs at one epoch (each name counts against the lookup limit)", "security": [{"bearer":[]}],
      "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["usernames"],
        "properties": { "usernames": {"type":"array","minItems":1,"maxItems":256,"items":{"$ref":"#/components/schemas/Username"}} } } } } },
      "responses": { "200": { "description": "proofs" }, "400": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/directory/history/{username}": { "get": { "summary": "A user's key history with its proof (rate-limited)", "security": [{"bearer":[]}],
      "parameters": [ { "name": "username", "in": "path", "required": true, "schema": {"$ref":"#/components/schemas/Username"} } ],
      "responses": { "200": { "description": "history and proof" }, "404": {"$ref":"#/components/responses/Error"}, "429": {"$ref":"#/components/responses/Error"} } } },
    "/v1/directory/audit": { "get": { "summary": "Append-only proofs from an epoch on, for auditors",
      "parameters": [ { "name": "from", "in": "query", "required": true, "schema": {"type":"integer","minimum":0} } ],
      "responses": { "200": { "description": "audit proofs" }, "400": {"$ref":"#/components/responses/Error"}, "404": {"$ref":"#/components/responses/Error"} } } }
  }
}"##;

#[cfg(test)]
mod tests {
    #[test]
    fn document_is_json() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        assert!(v["paths"]["/v1/sync"].is_object());
    }

    /// Every route the router serves is in the document, with its method, and the document has
    /// no path the router does not serve: the HTTP fuzz (schemathesis) reaches only what is
    /// documented, so a route left out would go untested.
    #[test]
    fn document_lists_every_route_of_the_router() {
        let v: serde_json::Value = serde_json::from_str(super::DOCUMENT).unwrap();
        let documented: std::collections::BTreeSet<(String, String)> = v["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(|m| (path.clone(), m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let served = crate::http::routes();
        let served: std::collections::BTreeSet<(String, String)> = served
            .iter()
            .map(|(p, m)| ((*p).to_owned(), (*m).to_owned()))
            .chain([("/openapi.json".to_owned(), "get".to_owned())])
            .collect();
        let documented: std::collections::BTreeSet<(String, String)> = documented
            .into_iter()
            .chain([("/openapi.json".to_owned(), "get".to_owned())])
            .collect();
        assert_eq!(documented, served);
        assert!(served.len() > 25, "the route list was read: {served:?}");
    }
}
