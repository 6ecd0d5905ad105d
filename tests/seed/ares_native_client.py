# A client written against ARES's own answers (dirmacs/ares at 81aa736), not the seed's docs:
# register answers a token pair (used at once, no login), and every refresh answers the
# refresh token to keep (ARES's refresh always rotates), which the client stores.
import json
import sys

import requests

base, email, password = sys.argv[1:4]
r = requests.post(f"{base}/api/auth/register",
                  json={"email": email, "password": password, "name": "Native"})
r.raise_for_status()
tokens = r.json()
access, refresh = tokens["access_token"], tokens["refresh_token"]
chats = []
for i in range(3):
    c = requests.post(f"{base}/api/chat", headers={"Authorization": f"Bearer {access}"},
                      json={"message": f"Hello {i}", "agent_type": "product"})
    c.raise_for_status()
    chats.append(c.json())
    r = requests.post(f"{base}/api/auth/refresh", json={"refresh_token": refresh})
    r.raise_for_status()
    answer = r.json()
    access, refresh = answer["access_token"], answer["refresh_token"]
me = requests.post(f"{base}/api/auth/logout", json={"refresh_token": refresh})
me.raise_for_status()
print(json.dumps({"chats": chats, "logged_out": me.json()}))
