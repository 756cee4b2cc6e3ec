// taskyard's JSON API, called with the operator's token. The token lives in this tab's
// sessionStorage only: never in a URL, never in localStorage, never logged.

const TOKEN_KEY = "taskyard.dashboard.token";

export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  save(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
  /** The token's `sub` and `roles`, for display only (the server is what checks it). */
  claims() {
    const token = this.token;
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
      return { sub: String(claims.sub ?? ""), roles: Array.isArray(claims.roles) ? claims.roles : [] };
    } catch {
      return null;
    }
  },
  /** False only when the token's claims say it has no role `admin`; true when unreadable
   * (the API decides, and its 403 is shown). For hiding admin-only buttons, not for security. */
  get mayAdminister() {
    const claims = this.claims();
    return !claims || claims.roles.includes("admin");
  },
};

export class ApiError extends Error {
  constructor(status, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0: the request never got an answer
    this.details = details;
  }

  /** The token itself was refused: missing, invalid, expired or without the role. */
  get rejectsToken() {
    return this.status === 401 || this.status === 403;
  }
}

/** GET an API path ("/api/stats"); params: an object (arrays repeat) or URLSearchParams. */
export function get(path, params) {
  return request("GET", path, { params });
}

/** POST to an API path: params go in the query string, body (if any) as JSON. */
export function post(path, params, body) {
  return request("POST", path, { params, body });
}

/** PUT a JSON body to an API path. */
export function put(path, body) {
  return request("PUT", path, { body });
}

function toQuery(params) {
  if (params instanceof URLSearchParams) return params;
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== null && item !== undefined && item !== "") query.append(key, String(item));
    }
  }
  return query;
}

async function request(method, path, { params, body } = {}) {
  // Relative to the page (…/dashboard/), so a reverse proxy's prefix is kept.
  const url = new URL(`..${path}`, document.baseURI);
  url.search = toQuery(params).toString();
  const token = session.token;
  const headers = { Accept: "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (err) {
    throw new ApiError(0, `cannot reach taskyard (${err.message})`);
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (!response.ok) {
    const message =
      answer && typeof answer.error === "string" ? answer.error : `HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message, answer ? answer.details : undefined);
  }
  return answer;
}

/** Settle several requests; a token rejection from any of them is thrown, other failures are
 * returned as ApiError values so the page can show what it has. */
export async function getAll(requests) {
  const settled = await Promise.allSettled(requests);
  for (const result of settled) {
    if (result.status === "rejected" && result.reason instanceof ApiError && result.reason.rejectsToken) {
      throw result.reason;
    }
  }
  return settled.map((r) => (r.status === "fulfilled" ? r.value : asApiError(r.reason)));
}

function asApiError(err) {
  return err instanceof ApiError ? err : new ApiError(0, String(err && err.message ? err.message : err));
}
