"""Places too large to identify anyone: countries, US states, continents.

HIPAA Safe Harbor removes geographic subdivisions smaller than a state; "a patient in
France" or "the US office" identifies no one, and redacting such words only costs the
model context. Country names come from python-phonenumbers' geodata (a Presidio dependency),
so the list stays current without one of our own.
"""

from __future__ import annotations

from functools import cache

US_STATES = (
    "Alabama Alaska Arizona Arkansas California Colorado Connecticut Delaware Florida Georgia "
    "Hawaii Idaho Illinois Indiana Iowa Kansas Kentucky Louisiana Maine Maryland "
    "Massachusetts Michigan Minnesota Mississippi Missouri Montana Nebraska Nevada "
    "New_Hampshire New_Jersey New_Mexico New_York North_Carolina North_Dakota Ohio Oklahoma "
    "Oregon Pennsylvania Rhode_Island South_Carolina South_Dakota Tennessee Texas Utah "
    "Vermont Virginia Washington West_Virginia Wisconsin Wyoming District_of_Columbia"
)
OTHER_WIDE_AREAS = (
    "US USA U.S. U.S.A. America United_States UK U.K. Britain Great_Britain England "
    "Scotland Wales EU Europe Asia Africa Oceania Australia Antarctica North_America "
    "South_America Latin_America the_Middle_East Middle_East Scandinavia the_US the_UK "
    "the_United_States the_United_Kingdom"
)


@cache
def wide_areas() -> frozenset[str]:
    """Casefolded names of countries, US states and continents."""
    names = {n.replace("_", " ") for n in (US_STATES + " " + OTHER_WIDE_AREAS).split()}
    names |= _country_names()
    return frozenset(name.casefold() for name in names)


def _country_names() -> set[str]:
    from phonenumbers.geodata.locale import LOCALE_DATA

    names = set()
    for by_language in LOCALE_DATA.values():
        name = by_language.get("en", "")
        while name.startswith("*"):  # "*aa": the same as that language's entry
            name = by_language.get(name[1:], "")
        if name:
            names.add(name)
    return names
