#include "check.hpp"
#include "einmoe/core/dim.hpp"

using namespace einmoe;

TEST_CASE("Dim validates its name and size", "[dim]") {
  Dim d{"batch", 8};
  CHECK(d.name == "batch");
  CHECK(d.size == 8);
  CHECK(Dim("x", 0).size == 0);
  CHECK_THROWS_NAMING(Dim("batch", -1), value_error, "\"batch\"");
  CHECK_THROWS_AS(Dim("", 3), value_error);
  CHECK_THROWS_NAMING(Dim("a:b", 3), value_error, "\"a:b\"");
  CHECK_THROWS_NAMING(Dim("a,b", 3), value_error, "\"a,b\"");
}

TEST_CASE("Shape parses and prints name:size lists", "[dim]") {
  const Shape s = Shape::parse("batch:8,length:512");
  REQUIRE(s.rank() == 2);
  CHECK(s[0] == Dim("batch", 8));
  CHECK(s[1] == Dim("length", 512));
  CHECK(s.to_string() == "batch:8,length:512");
  CHECK(Shape::parse(s.to_string()) == s);
  CHECK(Shape::parse(" batch : 8 , length:0 ") == Shape{{"batch", 8}, {"length", 0}});
  CHECK(Shape::parse("").rank() == 0);
  CHECK(Shape::parse("").num_elements() == 1);
  CHECK(s.num_elements() == 8 * 512);
  CHECK(Shape::parse("a:3,b:0").num_elements() == 0);
  std::ostringstream os;
  os << s;
  CHECK(os.str() == "[batch:8,length:512]");
}

TEST_CASE("Shape rejects bad text and duplicate names", "[dim]") {
  CHECK_THROWS_NAMING(Shape::parse("batch:8,batch:4"), shape_error, "\"batch\"");
  CHECK_THROWS_NAMING(Shape::parse("batch=8"), value_error, "batch=8");
  CHECK_THROWS_NAMING(Shape::parse("batch:x"), value_error, "\"batch\"");
  CHECK_THROWS_NAMING(Shape::parse("batch:-3"), value_error, "\"batch\"");
  CHECK_THROWS_AS(Shape::parse("batch:8,"), value_error);
  CHECK_THROWS_AS((Shape{{"a", 1}, {"a", 1}}), shape_error);
}

TEST_CASE("Shape lookups, strides and set relations", "[dim]") {
  const Shape s = Shape::parse("a:2,b:3,c:4");
  CHECK(s.index_of("b") == 1);
  CHECK(s.index_of("z") == -1);
  CHECK(s.has("c"));
  CHECK(s.size_of("c") == 4);
  CHECK_THROWS_NAMING(s.get("z"), shape_error, "\"z\"");
  CHECK(s.strides() == std::vector<index_t>{12, 4, 1});
  CHECK(Shape().strides().empty());
  CHECK(Shape::parse("a:2,c:4").is_subsequence_of(s));
  CHECK_FALSE(Shape::parse("c:4,a:2").is_subsequence_of(s));
  CHECK(Shape::parse("c:4,a:2").is_subset_of(s));
  CHECK_FALSE(Shape::parse("a:3").is_subsequence_of(s));
  CHECK_FALSE(Shape::parse("a:3").is_subset_of(s));
  CHECK(s.without({"b"}) == Shape::parse("a:2,c:4"));
  CHECK(s.without({"b", "zz"}) == Shape::parse("a:2,c:4"));
  CHECK(s.with(Dim("d", 5)) == Shape::parse("a:2,b:3,c:4,d:5"));
  CHECK_THROWS_AS(s.with(Dim("a", 5)), shape_error);
  CHECK(s.names() == std::vector<std::string>{"a", "b", "c"});
}

TEST_CASE("DimRegistry reports a name with two sizes", "[dim]") {
  detail::DimRegistry reg("einsum");
  reg.add(Shape::parse("group:2,experts:16"), "input 0");
  CHECK_NOTHROW(reg.add(Shape::parse("experts:16"), "input 1"));
  CHECK_THROWS_MATCHES(reg.add(Shape::parse("experts:8"), "input 1"), shape_error,
                       MessageContains("einsum: dim \"experts\" has size 16 in input 0 but 8 in input 1"));
}

TEST_CASE("Names accepts one name or a braced list", "[dim]") {
  CHECK(Names("a").list == std::vector<std::string>{"a"});
  CHECK(Names({"a", "b"}).list == std::vector<std::string>{"a", "b"});
  CHECK(Names(std::string("c")).list == std::vector<std::string>{"c"});
}
