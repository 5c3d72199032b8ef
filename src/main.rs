fn main() {
    println!("smarthost: being built");
}
