"""The Python side of pivtap's OpenID Connect interop tests, driven by the Rust tests.

Reads one JSON command a line on standard input and answers one JSON line on standard
output. It holds the relying party (rp.py: Authlib's client and a small web app), the
flows' codes and tokens (in memory only: no token, code or verifier is ever written out;
answers carry claims, statuses and error codes) and, for the browser tests, Debian's
chromium driven by selenium through Debian's chromedriver (never a downloaded one).

Commands (``{"cmd": NAME, ...}``):
  start {issuer, ca}                    discovery; starts the web app on a free port
  client {client_id, secret?, redirect_uri, scope, web?}
  authorize {flow, client_id, omit?, set?}   GET the kiosk's authorization URL, no redirects
  token {flow, client_id?, verifier?: keep|omit|wrong, redirect_uri?, auth?, secret?}
  refresh {flow, which?: current|replaced}
  native {flow, kiosk, token_file, client_id}   a native app's token from the kiosk
  userinfo {flow}
  introspect {flow, token: access|refresh, client_id?}
  revoke {flow, token: access|refresh, client_id?}
  logouts {}
  browser_start {screenshots}  browser_open {url}  browser_click {id}
  browser_wait {contains, timeout}  browser_shot {name}  quit {}
"""

import json
import os
import subprocess
import sys
import time
import traceback
import urllib.parse

import requests
from authlib.integrations.requests_client import OAuthError
from joserfc.errors import JoseError

from rp import Client, Provider, RelyingParty

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def without_code(url):
    """`url` with the value of a `code` parameter hidden (a page on the way back)."""
    parts = urllib.parse.urlsplit(url)
    query = [
        (name, "REDACTED" if name == "code" else value)
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


class Driver:
    def __init__(self):
        self.provider = None
        self.rp = None
        self.flows = {}
        self.browser = None
        self.screenshots = None

    # Set-up.

    def start(self, issuer, ca):
        self.provider = Provider(issuer, ca)
        self.rp = RelyingParty(self.provider, 0)
        return {"rp": self.rp.url(""), "metadata": self.provider.metadata}

    def client(self, client_id, redirect_uri, scope, secret=None, web=False):
        client = Client(self.provider, client_id, secret, redirect_uri, scope)
        self.rp.add_client(client, web=web)
        return {}

    # The authorization code flow, step by step, without a browser.

    def authorize(self, flow, client_id, omit=(), set=None):  # noqa: A002
        client = self.rp.clients[client_id]
        url, state, verifier, nonce = client.authorization_url()
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        for name in omit:
            query.pop(name, None)
        query.update(set or {})
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        answer = requests.get(url, allow_redirects=False, timeout=40)
        record = {
            "client_id": client_id,
            "redirect_uri": query.get("redirect_uri"),
            "verifier": verifier,
            "nonce": nonce,
        }
        said = {
            "authorization_endpoint": urllib.parse.urlunsplit(parts._replace(query="")),
            "parameters": sorted(query),
            "status": answer.status_code,
            "headers": {k.lower(): v for k, v in answer.headers.items() if k.lower() != "location"},
            "body": answer.text[:2000],
        }
        location = answer.headers.get("Location")
        if location is not None:
            back = urllib.parse.urlsplit(location)
            params = dict(urllib.parse.parse_qsl(back.query))
            record["code"] = params.get("code")
            said["location"] = {
                "target": urllib.parse.urlunsplit(back._replace(query="")),
                "parameters": sorted(params),
                "state_matches": params.get("state") == state,
                "iss": params.get("iss"),
                "error": params.get("error"),
                "code_length": len(params.get("code") or ""),
            }
        self.flows[flow] = record
        return said

    def _session(self, client_id, auth="client_secret_basic", secret=None):
        """An Authlib session of `client_id` that notes the status of each token answer."""
        session = self.rp.clients[client_id].session(auth=auth, secret=secret)
        session.last = {}

        def note(response):
            session.last["status"] = response.status_code
            session.last["cache_control"] = response.headers.get("Cache-Control")
            session.last["www_authenticate"] = response.headers.get("WWW-Authenticate")
            return response

        session.register_compliance_hook("access_token_response", note)
        session.register_compliance_hook("refresh_token_response", note)
        return session

    def _tokens(self, flow, token, nonce, client_id, session):
        """What a token answer held, its ID token validated by Authlib."""
        said = {
            "ok": True,
            "status": session.last.get("status"),
            "cache_control": session.last.get("cache_control"),
            "token_type": token.get("token_type"),
            "expires_in": token.get("expires_in"),
            "scope": token.get("scope"),
            "refresh_token": "refresh_token" in token,
            "id_token": None,
        }
        access = self.provider.decode(token["access_token"])
        said["access_token"] = {"header": dict(access.header), "claims": dict(access.claims)}
        if "id_token" in token:
            claims, header = self.provider.validate_id_token(
                token["id_token"], client_id, nonce, token["access_token"]
            )
            said["id_token"] = {"header": header, "claims": claims}
        if "refresh_token" in token:
            if "token" in flow and flow["token"].get("refresh_token") != token["refresh_token"]:
                flow["replaced_refresh"] = flow["token"].get("refresh_token")
                said["refresh_token_rotated"] = True
        flow["token"] = dict(token)
        return said

    def _error(self, error, session):
        return {
            "ok": False,
            "error": error.error,
            "description": error.description,
            "status": session.last.get("status"),
            "cache_control": session.last.get("cache_control"),
            "www_authenticate": session.last.get("www_authenticate"),
        }

    def token(
        self,
        flow,
        client_id=None,
        verifier="keep",
        redirect_uri=None,
        auth="client_secret_basic",
        secret=None,
    ):
        record = self.flows[flow]
        client_id = client_id or record["client_id"]
        session = self._session(client_id, auth=auth, secret=secret)
        params = {"code": record["code"], "grant_type": "authorization_code"}
        if verifier == "keep":
            params["code_verifier"] = record["verifier"]
        elif verifier == "wrong":
            params["code_verifier"] = "w" * 43
        params["redirect_uri"] = redirect_uri or record["redirect_uri"]
        try:
            token = session.fetch_token(**params)
        except OAuthError as error:
            return self._error(error, session)
        return self._tokens(record, token, record["nonce"], client_id, session)

    def refresh(self, flow, which="current"):
        record = self.flows[flow]
        session = self._session(record["client_id"])
        refresh_token = (
            record["token"]["refresh_token"] if which == "current" else record["replaced_refresh"]
        )
        try:
            token = session.refresh_token(refresh_token=refresh_token)
        except OAuthError as error:
            return self._error(error, session)
        # A refreshed ID token carries no nonce (none was asked for).
        return self._tokens(record, token, None, record["client_id"], session)

    def userinfo(self, flow):
        record = self.flows[flow]
        answer = requests.get(
            self.provider.metadata["userinfo_endpoint"],
            headers={"Authorization": "Bearer " + record["token"]["access_token"]},
            verify=self.provider.ca_file,
            timeout=10,
        )
        return {
            "status": answer.status_code,
            "json": answer.json() if answer.status_code == 200 else None,
            "www_authenticate": answer.headers.get("WWW-Authenticate"),
        }

    def native(self, flow, kiosk, token_file, client_id):
        """A native app's token from the kiosk's local API (token exchange at the server)."""
        with open(token_file, encoding="utf-8") as file:
            local_token = file.read().strip()
        answer = requests.post(
            kiosk + "/v1/session/token",
            json={"client_id": client_id},
            headers={"Authorization": "Bearer " + local_token},
            timeout=20,
        )
        said = {"status": answer.status_code}
        if answer.status_code != 200:
            said["json"] = answer.json()
            return said
        body = answer.json()
        self.flows[flow] = {"client_id": client_id, "token": body}
        access = self.provider.decode(body["access_token"])
        said.update(
            access_token={"header": dict(access.header), "claims": dict(access.claims)},
            issued_token_type=body.get("issued_token_type"),
            refresh_token="refresh_token" in body,
            id_token="id_token" in body,
        )
        return said

    def _token_of(self, record, which):
        return record["token"]["access_token" if which == "access" else "refresh_token"]

    def introspect(self, flow, token, client_id=None):
        record = self.flows[flow]
        session = self._session(client_id or record["client_id"])
        answer = session.introspect_token(
            self.provider.metadata["introspection_endpoint"],
            token=self._token_of(record, token),
            token_type_hint=f"{token}_token",
        )
        return {"status": answer.status_code, "json": answer.json()}

    def revoke(self, flow, token, client_id=None):
        record = self.flows[flow]
        session = self._session(client_id or record["client_id"])
        answer = session.revoke_token(
            self.provider.metadata["revocation_endpoint"],
            token=self._token_of(record, token),
            token_type_hint=f"{token}_token",
        )
        return {"status": answer.status_code}

    def logouts(self):
        return {"logouts": self.rp.received_logouts()}

    # The browser.

    def browser_start(self, screenshots):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for path in (CHROMIUM, CHROMEDRIVER):
            if not os.access(path, os.X_OK):
                raise RuntimeError(
                    f"{path} is missing: install Debian's chromium and chromium-driver "
                    "(scripts/setup-debian)"
                )
        os.makedirs(screenshots, exist_ok=True)
        self.screenshots = screenshots
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=900,700",
        ):
            options.add_argument(argument)
        # No chromedriver log: it would hold the URLs the browser went through, codes too.
        service = Service(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
        self.browser = webdriver.Chrome(service=service, options=options)
        self.browser.set_page_load_timeout(40)
        return {"version": self.browser.capabilities.get("browserVersion")}

    def _page(self):
        from selenium.webdriver.common.by import By

        return {
            "url": without_code(self.browser.current_url),
            "text": self.browser.find_element(By.TAG_NAME, "body").text,
        }

    def browser_open(self, url):
        self.browser.get(url)
        return self._page()

    def browser_click(self, id):  # noqa: A002
        from selenium.webdriver.common.by import By

        self.browser.find_element(By.ID, id).click()
        return {}

    def browser_wait(self, contains, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                page = self._page()
            except Exception:  # noqa: BLE001 - a page being replaced: look again
                page = {"url": None, "text": ""}
            if contains in page["text"]:
                page["found"] = True
                return page
            if time.monotonic() > deadline:
                page["found"] = False
                return page
            time.sleep(0.1)

    def browser_shot(self, name):
        path = os.path.join(self.screenshots, f"{name}.png")
        self.browser.save_screenshot(path)
        return {"path": path}

    def quit(self):
        if self.browser is not None:
            self.browser.quit()
            self.browser = None
        if self.rp is not None:
            self.rp.close()
        return {}


def main():
    driver = Driver()
    for line in sys.stdin:
        command = json.loads(line)
        name = command.pop("cmd")
        try:
            answer = getattr(driver, name)(**command)
        except (OAuthError, JoseError, requests.RequestException, RuntimeError, KeyError,
                ValueError, TypeError, AttributeError, OSError) as error:
            # The exception's type and message, never the arguments (they may hold tokens).
            answer = {"exception": f"{type(error).__name__}: {error}"}
            traceback.print_exc(limit=3)
        except Exception as error:  # noqa: BLE001 - selenium's errors, reported the same
            answer = {"exception": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(answer, default=str) + "\n")
        sys.stdout.flush()
        if name == "quit":
            return


if __name__ == "__main__":
    main()
