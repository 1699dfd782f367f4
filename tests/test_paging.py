"""Pages of list answers (AIP-158), by hand: sizes, tokens, items changing between calls, bad input."""

import pytest

from fedgrpo.services.orchestrator.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageError, page


def ident(x: str) -> str:
    return x


def test_pages_walk_every_item_once_in_key_order():
    items = [f"r{i:04d}" for i in range(250)][::-1]
    seen, token, pages = [], "", 0
    while True:
        chosen, token = page(items, ident, 100, token)
        seen += chosen
        pages += 1
        if not token:
            break
    assert seen == sorted(items) and pages == 3
    assert page(items, ident, 0, "")[0] == sorted(items)[:DEFAULT_PAGE_SIZE]
    assert len(page([f"{i:05d}" for i in range(3000)], ident, 5000, "")[0]) == MAX_PAGE_SIZE
    assert page(items[:3], ident, 3, "") == (sorted(items[:3]), "")  # exactly one page: no next token


def test_a_page_stays_right_when_items_come_and_go_between_calls():
    first, token = page(["a", "b", "c", "d"], ident, 2, "")
    assert first == ["a", "b"]
    # "b" was deleted and "ab" and "e" added meanwhile: the next page starts after "b", whatever changed
    assert page(["a", "ab", "c", "d", "e"], ident, 2, token) == (["c", "d"], page(["c", "d", "e"], ident, 2, "")[1])


@pytest.mark.parametrize("size, token, field", [(-1, "", "page_size"), (10, "not-a-token!", "page_token"),
                                                (10, "eyJ4IjogMX0", "page_token")])  # {"x": 1}
def test_bad_paging_names_the_field(size, token, field):
    with pytest.raises(PageError) as err:
        page(["a"], ident, size, token)
    assert err.value.field == field
