"""The lookup memo on its own: how long it keeps an answer, and what it forgets."""

from withcache.server import lookup
from withcache.server.lookup import Lookups
from withcache.server.records import Artifact

ARTIFACT = Artifact(id=1, key="https://h/a", scope="", sha256="a" * 64, size=1, headers={},
                    fetched_at=0.0)  # fmt: skip


class Store:
    def __init__(self, lookups: Lookups | None = None) -> None:
        self.queries = 0
        self.lookups = lookups  # forgets the key while answering: a change lands meanwhile

    async def query(self) -> Artifact:
        self.queries += 1
        if self.lookups is not None:
            self.lookups.forget(ARTIFACT.key)
        return ARTIFACT


async def test_an_answer_is_kept_until_its_key_is_forgotten():
    lookups, store = Lookups(), Store()
    for _ in range(3):
        assert await lookups.find(ARTIFACT.key, "", store.query) is ARTIFACT
    assert store.queries == 1
    lookups.changed(ARTIFACT.key)  # another host changed it
    await lookups.find(ARTIFACT.key, "", store.query)
    assert store.queries == 2


async def test_an_answer_whose_query_overlapped_a_forget_is_not_kept():
    lookups = Lookups()
    racing = Store(lookups)
    assert await lookups.find(ARTIFACT.key, "", racing.query) is ARTIFACT
    store = Store()
    await lookups.find(ARTIFACT.key, "", store.query)
    assert store.queries == 1  # asked again: the first answer may have predated the change


async def test_the_memo_lives_longer_only_while_changes_are_heard(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(lookup.time, "monotonic", lambda: clock[0])
    lookups, store = Lookups(), Store()
    lookups.listening(True)
    await lookups.find(ARTIFACT.key, "", store.query)
    clock[0] += lookup.LOOKUP_SECONDS + 1
    await lookups.find(ARTIFACT.key, "", store.query)
    assert store.queries == 1  # heard: kept past the short life
    lookups.listening(False)  # forgets everything, and answers live the short life
    await lookups.find(ARTIFACT.key, "", store.query)
    clock[0] += lookup.LOOKUP_SECONDS + 0.5
    await lookups.find(ARTIFACT.key, "", store.query)
    assert store.queries == 3
