pub struct Value; pub enum Handle {}
