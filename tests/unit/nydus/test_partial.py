import pytest

from nri_optimizer.errors import UsageError
from nri_optimizer.nydus.partial import CHUNK, DEFAULT_BUDGET, arrange, parse_budget, read_in_part
from nri_optimizer.results.formats import Entry

KIB, MIB = 1 << 10, 1 << 20


def entry(path: str, size: int, resident: int | None) -> Entry:
    return Entry(path.encode(errors="surrogateescape"), size, 0, resident)


LISTED = [
    entry("/small", 4 * KIB, None),  # not measured (the plugin measures files over 128 KiB only): prefetched
    entry("/whole", 30 * MIB, 30 * MIB),  # read entirely
    entry("/blas", 36 * MIB, 2 * MIB),  # 2 chunks read, 34 MiB unread: left on demand
    entry("/edge-in", MIB + 512 * KIB + 1, MIB + 1),  # 2 chunks read, 512 KiB unread: 2 x 256 KiB, it fits
    entry("/edge-out", MIB + 512 * KIB + 2, MIB + 1),  # one byte more than the budget
    entry("/unread", 300 * KIB, 0),  # opened, never read
    entry("/empty", 0, 0),
    entry("/fresh-\udcff", 8 * MIB, 1),  # a name that is not UTF-8 comes back as the list writes it
]


def test_files_read_in_small_part_are_left_on_demand_in_list_order():
    assert read_in_part(LISTED, 256 * KIB) == ["/blas", "/edge-out", "/unread", "/fresh-\udcff"]


def test_the_budget_is_per_chunk_read():
    # 2 chunks read of /blas: at 17 MiB a chunk its 34 MiB unread fit
    assert read_in_part([LISTED[2]], 17 * MIB) == []
    assert read_in_part([LISTED[2]], 17 * MIB - 1) == ["/blas"]
    assert -(-(CHUNK + 1) // CHUNK) == 2  # a byte past a chunk is a chunk more


def test_zero_keeps_files_read_entirely_and_all_keeps_every_file():
    assert read_in_part(LISTED, 0) == ["/blas", "/edge-in", "/edge-out", "/unread", "/fresh-\udcff"]
    assert read_in_part(LISTED, None) == []


@pytest.mark.parametrize(
    "text, budget",
    [("256KiB", 256 * KIB), ("256k", 256 * KIB), ("1MiB", MIB), ("2m", 2 * MIB), ("0", 0), ("100", 100), ("all", None)],
)
def test_budgets(text, budget):
    assert parse_budget(text) == budget


def test_the_default_is_a_round_trip_of_a_common_link():
    assert DEFAULT_BUDGET == 256 * KIB


@pytest.mark.parametrize("text", ["", "-1", "1.5M", "1G", "lots"])
def test_a_bad_budget_names_the_flag_and_the_forms(text):
    with pytest.raises(UsageError) as raised:
        parse_budget(text)
    assert str(raised.value) == f"--unread-budget {text}: expected a size (e.g. 256KiB, 1MiB, 0) or 'all'"


def test_files_read_in_part_are_left_out_of_the_table_or_moved_to_its_end():
    paths = ["/a", "/big", "/b", "/huge", "/c"]
    assert arrange(paths, ["/big", "/huge"], "on-demand") == (paths, ["/big", "/huge"])
    assert arrange(paths, ["/big", "/huge"], "last") == (["/a", "/b", "/c", "/big", "/huge"], [])
    assert arrange(paths, [], "last") == (paths, [])
